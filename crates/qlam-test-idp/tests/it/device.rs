use std::time::Duration;

use qlam_test_idp::IdpConfig;

use crate::common::*;

fn is_user_code(c: &str) -> bool {
    c.len() == 9
        && c.char_indices().all(|(i, ch)| {
            if i == 4 {
                ch == '-'
            } else {
                ch.is_ascii_uppercase()
            }
        })
}

#[test]
fn pending_then_approved_then_redeemed_once() {
    let idp = start(fast());
    let b = idp.base_url();
    let d = device_authorize(&idp, "openid profile email offline_access");
    let user_code = str_of(&d, "user_code");
    let device_code = str_of(&d, "device_code");
    assert!(is_user_code(user_code), "{user_code}");
    assert_eq!(d["verification_uri"], format!("{b}/activate"));
    assert_eq!(
        d["verification_uri_complete"],
        format!("{b}/activate?user_code={user_code}")
    );
    assert_eq!(d["expires_in"], 600);
    assert_eq!(d["interval"], 0);
    assert_eq!(idp.pending_user_codes(), vec![user_code.to_string()]);

    let r = poll(&idp, device_code);
    assert_eq!(
        (r.status, r.error().as_str()),
        (400, "authorization_pending")
    );

    assert!(idp.approve(&user_code.to_lowercase().replace('-', "")));
    assert!(idp.pending_user_codes().is_empty());
    let r = poll(&idp, device_code);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let t = r.json();
    let at = str_of(&t, "access_token");
    let rt = str_of(&t, "refresh_token");
    assert!(at.starts_with("at_") && at.len() >= 35, "{at}");
    assert!(rt.starts_with("rt_") && rt.len() >= 35, "{rt}");
    assert!(
        at[3..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(t["scope"], "openid profile email offline_access");
    let claims = jwt_claims(str_of(&t, "id_token"));
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["sub"], "test-user");
    assert_eq!(claims["aud"], CLIENT);
    assert_eq!(claims["email"], "test-user@example.com");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    assert!(idp.introspect(at) && idp.introspect(rt));

    let r = poll(&idp, device_code);
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_grant"));

    let c = idp.counters();
    assert_eq!(
        (
            c.device_authorization,
            c.device_token_polls,
            c.device_tokens_issued,
            c.token_requests
        ),
        (1, 3, 1, 3)
    );
}

#[test]
fn no_refresh_token_without_offline_access_and_no_id_token_without_openid() {
    let idp = start(fast());
    let d = device_authorize(&idp, "openid email");
    assert!(idp.approve(str_of(&d, "user_code")));
    let t = poll(&idp, str_of(&d, "device_code")).json();
    assert!(t.get("refresh_token").is_none());
    assert!(t.get("id_token").is_some());

    let d = device_authorize(&idp, "offline_access");
    assert!(idp.approve(str_of(&d, "user_code")));
    let t = poll(&idp, str_of(&d, "device_code")).json();
    assert!(t.get("refresh_token").is_some());
    assert!(t.get("id_token").is_none());
}

#[test]
fn polling_too_fast_gets_slow_down_and_a_longer_interval() {
    let idp = start(IdpConfig {
        device_interval: Some(2),
        ..IdpConfig::default()
    });
    let d = device_authorize(&idp, "openid offline_access");
    assert_eq!(d["interval"], 2);
    let code = str_of(&d, "device_code");
    assert_eq!(poll(&idp, code).error(), "authorization_pending");
    let r = poll(&idp, code);
    assert_eq!((r.status, r.error().as_str()), (400, "slow_down"));
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("7 s")
    );
    assert_eq!(poll(&idp, code).error(), "slow_down");
    // Approval does not exempt a code from its interval.
    assert!(idp.approve(str_of(&d, "user_code")));
    assert_eq!(poll(&idp, code).error(), "slow_down");
}

#[test]
fn omitted_interval_still_enforces_five_seconds() {
    let idp = start(IdpConfig {
        device_interval: None,
        ..IdpConfig::default()
    });
    let d = device_authorize(&idp, "openid");
    assert!(d.get("interval").is_none(), "{d}");
    let code = str_of(&d, "device_code");
    assert_eq!(poll(&idp, code).error(), "authorization_pending");
    let r = poll(&idp, code);
    assert_eq!(r.error(), "slow_down");
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("10 s")
    );
}

#[test]
fn denied_code_gets_access_denied() {
    let idp = start(fast());
    let d = device_authorize(&idp, "openid offline_access");
    let user_code = str_of(&d, "user_code");
    assert!(idp.deny(user_code));
    assert!(!idp.approve(user_code));
    let r = poll(&idp, str_of(&d, "device_code"));
    assert_eq!((r.status, r.error().as_str()), (400, "access_denied"));
    assert!(!idp.deny("BCDF-GHJK"));
}

#[test]
fn expired_code_gets_expired_token() {
    let idp = start(IdpConfig {
        device_code_ttl: 1,
        device_interval: Some(0),
        ..IdpConfig::default()
    });
    let d = device_authorize(&idp, "openid offline_access");
    assert_eq!(d["expires_in"], 1);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(idp.pending_user_codes().is_empty());
    assert!(!idp.approve(str_of(&d, "user_code")));
    let r = poll(&idp, str_of(&d, "device_code"));
    assert_eq!((r.status, r.error().as_str()), (400, "expired_token"));
}

#[test]
fn unknown_client_and_wrong_client_are_rejected() {
    let idp = start(fast());
    let r = post(
        &format!("{}/oauth/device/code", idp.base_url()),
        &[("client_id", "nobody"), ("scope", "openid")],
    );
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_client"));
    let r = post(
        &format!("{}/oauth/device/code", idp.base_url()),
        &[("scope", "openid")],
    );
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_client"));
}

#[test]
fn activate_page_approves_like_a_person() {
    let idp = start(fast());
    let b = idp.base_url();
    let d = device_authorize(&idp, "openid offline_access");
    let user_code = str_of(&d, "user_code");
    let page = get(str_of(&d, "verification_uri_complete"));
    assert_eq!(page.status, 200);
    assert!(page.text.contains(user_code) && page.text.contains("<form"));
    let r = post(
        &format!("{b}/activate"),
        &[
            ("user_code", &user_code.to_lowercase()),
            ("action", "approve"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(poll(&idp, str_of(&d, "device_code")).status, 200);
    let r = post(&format!("{b}/activate"), &[("user_code", user_code)]);
    assert_eq!(r.status, 400);
}

#[test]
fn auto_approve_logs_in_demo_user_at_once() {
    let idp = start(IdpConfig {
        auto_approve: true,
        ..IdpConfig::default()
    });
    let d = device_authorize(&idp, "openid offline_access");
    assert!(idp.pending_user_codes().is_empty());
    let r = poll(&idp, str_of(&d, "device_code"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        jwt_claims(str_of(&r.json(), "id_token"))["sub"],
        "demo-user"
    );
}

#[test]
fn device_requests_are_recorded_without_secrets() {
    let idp = start(fast());
    let r = post(
        &format!("{}/oauth/device/code", idp.base_url()),
        &[
            ("client_id", CLIENT),
            ("scope", "openid organization:acme"),
            ("audience", "https://api.example"),
        ],
    );
    let d = r.json();
    idp.approve(str_of(&d, "user_code"));
    poll(&idp, str_of(&d, "device_code"));
    let log = idp.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].endpoint, "device_authorization");
    assert_eq!(log[0].values["scope"], "openid organization:acme");
    assert_eq!(log[0].values["audience"], "https://api.example");
    assert_eq!(log[0].auth_method, "none");
    assert_eq!(log[0].status, Some(200));
    assert_eq!(log[1].endpoint, "token");
    assert_eq!(
        log[1].grant_type.as_deref(),
        Some("urn:ietf:params:oauth:grant-type:device_code")
    );
    assert_eq!(
        log[1].params,
        vec!["grant_type", "device_code", "client_id"]
    );
    assert!(!log[1].values.contains_key("device_code"));
    assert_eq!(log[1].seq, 2);
}
