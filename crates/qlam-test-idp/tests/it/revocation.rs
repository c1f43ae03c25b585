use crate::common::*;

fn revoke(idp: &qlam_test_idp::Idp, token: &str) -> Reply {
    post(
        &format!("{}/oauth/revoke", idp.base_url()),
        &[("token", token), ("client_id", CLIENT)],
    )
}

#[test]
fn revoking_a_refresh_token_revokes_its_family() {
    let idp = start(fast());
    let t0 = login(&idp);
    let t1 = refresh(&idp, str_of(&t0, "refresh_token")).json();
    let r = revoke(&idp, str_of(&t1, "refresh_token"));
    assert_eq!(r.status, 200);
    assert!(!idp.introspect(str_of(&t1, "refresh_token")));
    assert!(!idp.introspect(str_of(&t1, "access_token")));
    assert!(!idp.introspect(str_of(&t0, "access_token")));
    assert_eq!(
        refresh(&idp, str_of(&t1, "refresh_token")).error(),
        "invalid_grant"
    );
    let c = idp.counters();
    assert_eq!((c.revocations, c.families_revoked), (1, 1));
    // Unknown and already revoked tokens: still 200.
    assert_eq!(revoke(&idp, "rt_unknown").status, 200);
    assert_eq!(revoke(&idp, str_of(&t1, "refresh_token")).status, 200);
    assert_eq!(idp.counters().families_revoked, 1);
    let log = idp.requests();
    assert_eq!(log.last().unwrap().endpoint, "revocation");
}

#[test]
fn revoking_an_access_token_revokes_only_it() {
    let idp = start(fast());
    let t = login(&idp);
    let at = str_of(&t, "access_token");
    let me = get_bearer(&format!("{}/userinfo", idp.base_url()), at);
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["sub"], "test-user");
    assert_eq!(me.json()["email"], "test-user@example.com");
    assert_eq!(revoke(&idp, at).status, 200);
    assert!(!idp.introspect(at));
    assert!(idp.introspect(str_of(&t, "refresh_token")));
    let me = get_bearer(&format!("{}/userinfo", idp.base_url()), at);
    assert_eq!(me.status, 401);
    assert_eq!(idp.counters().families_revoked, 0);
}

#[test]
fn introspection_endpoint_answers_rfc7662() {
    let idp = start(fast());
    let t = login(&idp);
    let url = format!("{}/oauth/introspect", idp.base_url());
    let v = post(&url, &[("token", str_of(&t, "access_token"))]).json();
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], CLIENT);
    assert_eq!(v["sub"], "test-user");
    let v = post(&url, &[("token", str_of(&t, "refresh_token"))]).json();
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "refresh_token");
    assert_eq!(
        post(&url, &[("token", "at_nope")]).json(),
        serde_json::json!({"active": false})
    );
}
