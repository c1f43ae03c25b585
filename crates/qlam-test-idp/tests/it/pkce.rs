use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use qlam_test_idp::IdpConfig;
use sha2::{Digest, Sha256};

use crate::common::*;

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "http://localhost:18080/auth/callback";

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn authorize_url(idp: &qlam_test_idp::Idp, extra: &str) -> String {
    format!(
        "{}/authorize?response_type=code&client_id={CLIENT}&redirect_uri={}&scope=openid%20offline_access&state=xyz&code_challenge={}&code_challenge_method=S256{extra}",
        idp.base_url(),
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>(),
        challenge(VERIFIER)
    )
}

/// The query parameters of a redirect to `REDIRECT`.
fn redirect_params(r: &Reply) -> std::collections::HashMap<String, String> {
    assert_eq!(r.status, 302, "{}", r.text);
    let loc = url::Url::parse(&r.header("location").unwrap()).unwrap();
    assert_eq!(&loc.as_str()[..REDIRECT.len()], REDIRECT);
    loc.query_pairs().into_owned().collect()
}

fn exchange(idp: &qlam_test_idp::Idp, code: &str, verifier: &str, redirect: &str) -> Reply {
    post(
        &token_url(idp),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT),
            ("code", code),
            ("code_verifier", verifier),
            ("redirect_uri", redirect),
        ],
    )
}

#[test]
fn auto_approved_code_exchanges_once_with_the_right_verifier() {
    let idp = start(IdpConfig {
        auto_approve: true,
        ..IdpConfig::default()
    });
    let q = redirect_params(&get(&authorize_url(&idp, "")));
    assert_eq!(q["state"], "xyz");
    let code = &q["code"];
    let r = exchange(&idp, code, VERIFIER, REDIRECT);
    assert_eq!(r.status, 200, "{}", r.text);
    let t = r.json();
    assert!(str_of(&t, "refresh_token").starts_with("rt_"));
    assert_eq!(jwt_claims(str_of(&t, "id_token"))["sub"], "demo-user");
    assert_eq!(
        exchange(&idp, code, VERIFIER, REDIRECT).error(),
        "invalid_grant"
    );
    assert_eq!(idp.counters().authorization_code_requests, 2);
}

#[test]
fn wrong_verifier_or_redirect_uri_is_invalid_grant() {
    let idp = start(IdpConfig {
        auto_approve: true,
        ..IdpConfig::default()
    });
    let code = redirect_params(&get(&authorize_url(&idp, "")))["code"].clone();
    let wrong = "x".repeat(43);
    assert_eq!(
        exchange(&idp, &code, &wrong, REDIRECT).error(),
        "invalid_grant"
    );
    // A failed attempt consumes the code.
    assert_eq!(
        exchange(&idp, &code, VERIFIER, REDIRECT).error(),
        "invalid_grant"
    );

    let code = redirect_params(&get(&authorize_url(&idp, "")))["code"].clone();
    let r = exchange(&idp, &code, VERIFIER, "http://localhost:9999/cb");
    assert_eq!(r.error(), "invalid_grant");
}

#[test]
fn manual_approval_through_the_page() {
    let idp = start(IdpConfig::default());
    let page = get(&authorize_url(&idp, ""));
    assert_eq!(page.status, 200);
    let marker = "name=\"request_id\" value=\"";
    let start_at = page.text.find(marker).unwrap() + marker.len();
    let id = &page.text[start_at..start_at + page.text[start_at..].find('"').unwrap()];
    let approve = format!("{}/authorize/approve", idp.base_url());
    let q = redirect_params(&post(
        &approve,
        &[("request_id", id), ("action", "approve")],
    ));
    assert_eq!(q["state"], "xyz");
    let t = exchange(&idp, &q["code"], VERIFIER, REDIRECT).json();
    assert_eq!(jwt_claims(str_of(&t, "id_token"))["sub"], "test-user");
    // Each request is decided once.
    assert_eq!(post(&approve, &[("request_id", id)]).status, 400);

    let page = get(&authorize_url(&idp, ""));
    let start_at = page.text.find(marker).unwrap() + marker.len();
    let id = &page.text[start_at..start_at + page.text[start_at..].find('"').unwrap()];
    let q = redirect_params(&post(&approve, &[("request_id", id), ("action", "deny")]));
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "xyz");
}

#[test]
fn authorize_rejects_requests_without_pkce_s256() {
    let idp = start(IdpConfig {
        auto_approve: true,
        ..IdpConfig::default()
    });
    let b = idp.base_url();
    let url = format!(
        "{b}/authorize?response_type=code&client_id={CLIENT}&redirect_uri={REDIRECT}&state=s"
    );
    let q = redirect_params(&get(&url));
    assert_eq!(q["error"], "invalid_request");
    assert_eq!(q["state"], "s");
    let q = redirect_params(&get(&format!(
        "{url}&code_challenge=abc&code_challenge_method=plain"
    )));
    assert_eq!(q["error"], "invalid_request");
    let q = redirect_params(&get(
        &authorize_url(&idp, "").replace("response_type=code", "response_type=token")
    ));
    assert_eq!(q["error"], "unsupported_response_type");
    // Unknown client: no redirect at all.
    let r = get(&format!(
        "{b}/authorize?response_type=code&client_id=nobody&redirect_uri={REDIRECT}"
    ));
    assert_eq!(r.status, 400);
}
