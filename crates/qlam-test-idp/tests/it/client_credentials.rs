use qlam_test_idp::{ClientSpec, IdpConfig};

use crate::common::*;

const SECRET: &str = "s3cret:with &odd+chars%";

fn m2m() -> IdpConfig {
    IdpConfig {
        clients: vec![
            ClientSpec::public(CLIENT),
            ClientSpec::confidential("m2m", SECRET),
        ],
        ..IdpConfig::default()
    }
}

#[test]
fn client_secret_post_and_basic() {
    let idp = start(m2m());
    let form = [
        ("grant_type", "client_credentials"),
        ("audience", "https://api.example"),
    ];
    let mut post_form = form.to_vec();
    post_form.extend([("client_id", "m2m"), ("client_secret", SECRET)]);
    let r = post(&token_url(&idp), &post_form);
    assert_eq!(r.status, 200, "{}", r.text);
    let t = r.json();
    assert!(str_of(&t, "access_token").starts_with("at_"));
    assert!(t.get("refresh_token").is_none());
    assert!(t.get("id_token").is_none());
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(t["token_type"], "Bearer");
    assert!(idp.introspect(str_of(&t, "access_token")));

    let r = post_basic(&token_url(&idp), "m2m", SECRET, &form);
    assert_eq!(r.status, 200, "{}", r.text);

    let log = idp.requests();
    assert_eq!(log[0].auth_method, "post");
    assert_eq!(log[1].auth_method, "basic");
    assert!(log[0].params.contains(&"client_secret".to_string()));
    assert!(!serde_json::to_string(&log).unwrap().contains("s3cret"));
    let c = idp.counters();
    assert_eq!(
        (
            c.client_credentials_requests,
            c.client_credentials_ok,
            c.token_requests
        ),
        (2, 2, 2)
    );
}

#[test]
fn wrong_or_missing_secret_is_invalid_client() {
    let idp = start(m2m());
    let url = token_url(&idp);
    let r = post(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "m2m"),
            ("client_secret", "nope"),
        ],
    );
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_client"));
    let r = post_basic(&url, "m2m", "nope", &[("grant_type", "client_credentials")]);
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_client"));
    let r = post(
        &url,
        &[("grant_type", "client_credentials"), ("client_id", "m2m")],
    );
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_client"));
    // A public client may not use the grant at all.
    let r = post(
        &url,
        &[("grant_type", "client_credentials"), ("client_id", CLIENT)],
    );
    assert_eq!((r.status, r.error().as_str()), (400, "unauthorized_client"));
    // Two authentication methods at once.
    let r = post_basic(
        &url,
        "m2m",
        SECRET,
        &[
            ("grant_type", "client_credentials"),
            ("client_secret", SECRET),
        ],
    );
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_request"));
    let c = idp.counters();
    assert_eq!(
        (c.client_credentials_requests, c.client_credentials_ok),
        (5, 0)
    );
}

#[test]
fn quota_caps_total_mints() {
    let idp = start(IdpConfig {
        m2m_quota: Some(2),
        ..m2m()
    });
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "m2m"),
        ("client_secret", SECRET),
    ];
    assert_eq!(post(&token_url(&idp), &form).status, 200);
    assert_eq!(post(&token_url(&idp), &form).status, 200);
    let r = post(&token_url(&idp), &form);
    assert_eq!((r.status, r.error().as_str()), (429, "too_many_requests"));
    // reset_counters does not refill the quota; raising it does.
    idp.reset_counters();
    assert_eq!(post(&token_url(&idp), &form).status, 429);
    idp.set_m2m_quota(Some(3));
    assert_eq!(post(&token_url(&idp), &form).status, 200);
    let c = idp.counters();
    assert_eq!(
        (c.client_credentials_requests, c.client_credentials_ok),
        (2, 1)
    );
}

#[test]
fn unsupported_grant_and_repeated_parameters() {
    let idp = start(m2m());
    let r = post(
        &token_url(&idp),
        &[("grant_type", "password"), ("client_id", CLIENT)],
    );
    assert_eq!(r.error(), "unsupported_grant_type");
    let r = post(&token_url(&idp), &[("client_id", CLIENT)]);
    assert_eq!(r.error(), "invalid_request");
    let r = post(
        &token_url(&idp),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "m2m"),
            ("client_id", "m2m"),
            ("client_secret", SECRET),
        ],
    );
    assert_eq!(r.error(), "invalid_request");
    assert_eq!(idp.counters().token_requests, 3);
    let r = get(&token_url(&idp));
    assert_eq!(r.status, 405);
}
