//! The `/admin/*` endpoints, as a test in another process would use them.

use serde_json::json;

use crate::common::*;

#[test]
fn approve_deny_pending_over_http() {
    let idp = start(fast());
    let b = idp.base_url();
    let d1 = device_authorize(&idp, "openid offline_access");
    let d2 = device_authorize(&idp, "openid offline_access");
    let pending = get(&format!("{b}/admin/pending")).json();
    assert_eq!(
        pending,
        json!({"user_codes": [d1["user_code"], d2["user_code"]]})
    );

    let r = post(
        &format!("{b}/admin/approve"),
        &[("user_code", str_of(&d1, "user_code"))],
    );
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
    // JSON sent as `curl -d '{...}'` does, with a form content type.
    let body = json!({"user_code": d2["user_code"]}).to_string();
    let r = agent()
        .post(&format!("{b}/admin/deny"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(&body)
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = post(
        &format!("{b}/admin/approve"),
        &[("user_code", str_of(&d2, "user_code"))],
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["ok"], false);
    assert_eq!(poll(&idp, str_of(&d1, "device_code")).status, 200);
    assert_eq!(
        poll(&idp, str_of(&d2, "device_code")).error(),
        "access_denied"
    );
    assert_eq!(
        get(&format!("{b}/admin/pending")).json(),
        json!({"user_codes": []})
    );
}

#[test]
fn counters_requests_and_reset_over_http() {
    let idp = start(fast());
    let b = idp.base_url();
    let t = login(&idp);
    let c = get(&format!("{b}/admin/counters")).json();
    assert_eq!(c["device_authorization"], 1);
    assert_eq!(c["device_tokens_issued"], 1);
    assert_eq!(c["token_requests"], 1);
    assert_eq!(c.as_object().unwrap().len(), 17);
    let reqs = get(&format!("{b}/admin/requests")).json();
    assert_eq!(reqs.as_array().unwrap().len(), 2);
    assert_eq!(reqs[1]["endpoint"], "token");
    assert_eq!(reqs[1]["auth_method"], "none");
    assert!(!reqs.to_string().contains(str_of(&t, "access_token")));

    assert_eq!(post(&format!("{b}/admin/reset-counters"), &[]).status, 200);
    let c: qlam_test_idp::Counters =
        serde_json::from_value(get(&format!("{b}/admin/counters")).json()).unwrap();
    assert_eq!(c, qlam_test_idp::Counters::default());
    assert_eq!(get(&format!("{b}/admin/requests")).json(), json!([]));
}

#[test]
fn faults_over_http() {
    let idp = start(fast());
    let b = idp.base_url();
    let token = token_url(&idp);
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", "rt_x"),
        ("client_id", CLIENT),
    ];
    let push = |body: serde_json::Value| {
        let r = post_json(&format!("{b}/admin/faults"), &body);
        assert_eq!(r.status, 200, "{}", r.text);
    };
    push(json!({"endpoint": "token", "fault": {"status": 503}, "times": 1}));
    push(json!({"endpoint": "token", "fault": {"rate_limit": {"retry_after": 1}}, "times": 1}));
    push(json!({"endpoint": "token", "fault": {"latency_ms": 50}, "times": 1}));
    push(json!({"endpoint": "token", "fault": "malformed_json", "times": 1}));
    push(json!({"endpoint": "token", "fault": "drop", "times": 1}));
    assert_eq!(post(&token, &form).status, 503);
    let r = post(&token, &form);
    assert_eq!(
        (r.status, r.header("retry-after").as_deref()),
        (429, Some("1"))
    );
    assert_eq!(post(&token, &form).error(), "invalid_grant");
    assert_eq!(post(&token, &form).status, 200);
    assert!(try_post(&token, &form).is_err());
    assert_eq!(post(&token, &form).error(), "invalid_grant");

    push(json!({"endpoint": "discovery", "fault": {"status": 500}}));
    let disco = format!("{b}/.well-known/openid-configuration");
    assert_eq!(get(&disco).status, 500);
    assert_eq!(get(&disco).status, 500);
    assert_eq!(post(&format!("{b}/admin/clear-faults"), &[]).status, 200);
    assert_eq!(get(&disco).status, 200);
    assert_eq!(idp.counters().faults_injected, 7);

    let bad = post_json(
        &format!("{b}/admin/faults"),
        &json!({"endpoint": "token", "fault": "explode"}),
    );
    assert_eq!(bad.status, 400);
    let bad = post_json(
        &format!("{b}/admin/faults"),
        &json!({"endpoint": "nowhere", "fault": "drop"}),
    );
    assert_eq!(bad.status, 400);
}

#[test]
fn config_revoke_all_and_introspect_over_http() {
    let idp = start(fast());
    let b = idp.base_url();
    let r = post_json(
        &format!("{b}/admin/config"),
        &json!({"access_token_ttl": 60}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["access_token_ttl"], 60);
    let t = login(&idp);
    assert_eq!(t["expires_in"], 60);
    let introspect = |tok: &str| post(&format!("{b}/admin/introspect"), &[("token", tok)]).json();
    assert_eq!(
        introspect(str_of(&t, "refresh_token")),
        json!({"active": true})
    );
    assert_eq!(post(&format!("{b}/admin/revoke-all"), &[]).status, 200);
    assert_eq!(
        introspect(str_of(&t, "refresh_token")),
        json!({"active": false})
    );
    assert_eq!(
        introspect(str_of(&t, "access_token")),
        json!({"active": false})
    );
    assert_eq!(idp.counters().families_revoked, 1);

    let r = post_json(&format!("{b}/admin/config"), &json!({"no_such_setting": 1}));
    assert_eq!(r.status, 400);
    assert_eq!(get(&format!("{b}/admin/nothing")).status, 404);
    assert_eq!(get(&format!("{b}/admin/revoke-all")).status, 405);
    // Admin requests are not counted.
    assert_eq!(idp.counters().token_requests, 1);
}
