use std::time::Duration;

use qlam_test_idp::IdpConfig;

use crate::common::*;

#[test]
fn every_refresh_rotates_the_refresh_token() {
    let idp = start(fast());
    let t0 = login(&idp);
    let rt0 = str_of(&t0, "refresh_token");
    let r = refresh(&idp, rt0);
    assert_eq!(r.status, 200, "{}", r.text);
    let t1 = r.json();
    let rt1 = str_of(&t1, "refresh_token");
    assert_ne!(rt0, rt1);
    assert_ne!(t0["access_token"], t1["access_token"]);
    assert_eq!(t1["scope"], "openid profile email offline_access");
    assert_eq!(jwt_claims(str_of(&t1, "id_token"))["sub"], "test-user");
    // The used token is no longer redeemable; the new one is.
    assert!(!idp.introspect(rt0));
    assert!(idp.introspect(rt1));
    let t2 = refresh(&idp, rt1).json();
    assert!(idp.introspect(str_of(&t2, "refresh_token")));
    let c = idp.counters();
    assert_eq!(
        (
            c.refresh_requests,
            c.refresh_ok,
            c.refresh_rejected,
            c.families_revoked
        ),
        (2, 2, 0, 0)
    );
}

#[test]
fn reusing_a_used_refresh_token_revokes_the_whole_family() {
    let idp = start(fast());
    let t0 = login(&idp);
    let rt0 = str_of(&t0, "refresh_token");
    let t1 = refresh(&idp, rt0).json();
    let rt1 = str_of(&t1, "refresh_token");

    let r = refresh(&idp, rt0);
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_grant"));
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("reuse")
    );
    // Everything descended from that login is dead, access tokens included.
    assert_eq!(refresh(&idp, rt1).error(), "invalid_grant");
    assert!(!idp.introspect(rt1));
    assert!(!idp.introspect(str_of(&t0, "access_token")));
    assert!(!idp.introspect(str_of(&t1, "access_token")));
    let c = idp.counters();
    assert_eq!(
        (
            c.refresh_requests,
            c.refresh_ok,
            c.refresh_rejected,
            c.families_revoked
        ),
        (3, 1, 2, 1)
    );

    // Another login is unaffected.
    let other = login(&idp);
    assert_eq!(refresh(&idp, str_of(&other, "refresh_token")).status, 200);
}

#[test]
fn reuse_within_the_reuse_interval_is_tolerated() {
    let idp = start(IdpConfig {
        reuse_interval: 1,
        device_interval: Some(0),
        ..IdpConfig::default()
    });
    let t0 = login(&idp);
    let rt0 = str_of(&t0, "refresh_token");
    let rt1 = str_of(&refresh(&idp, rt0).json(), "refresh_token").to_string();
    // Within the interval: a fresh pair of the same family.
    let r = refresh(&idp, rt0);
    assert_eq!(r.status, 200, "{}", r.text);
    let rt2 = str_of(&r.json(), "refresh_token").to_string();
    assert!(rt2 != rt1 && rt2 != rt0);
    assert!(idp.introspect(rt0));
    std::thread::sleep(Duration::from_millis(1050));
    assert!(!idp.introspect(rt0));
    // Past it: the family goes.
    assert_eq!(refresh(&idp, rt0).error(), "invalid_grant");
    assert_eq!(refresh(&idp, &rt1).error(), "invalid_grant");
    assert_eq!(refresh(&idp, &rt2).error(), "invalid_grant");
    assert_eq!(idp.counters().families_revoked, 1);
}

#[test]
fn unknown_expired_foreign_and_revoked_tokens_are_invalid_grant() {
    let idp = start(IdpConfig {
        clients: vec![
            qlam_test_idp::ClientSpec::public(CLIENT),
            qlam_test_idp::ClientSpec::public("other"),
        ],
        device_interval: Some(0),
        ..IdpConfig::default()
    });
    assert_eq!(refresh(&idp, "rt_nope").error(), "invalid_grant");
    let t = login(&idp);
    let rt = str_of(&t, "refresh_token");
    let r = post(
        &token_url(&idp),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", "other"),
        ],
    );
    assert_eq!(r.error(), "invalid_grant");
    let r = post(
        &token_url(&idp),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", CLIENT),
            ("scope", "openid admin"),
        ],
    );
    assert_eq!(r.error(), "invalid_scope");
    let r = post(
        &token_url(&idp),
        &[("grant_type", "refresh_token"), ("client_id", CLIENT)],
    );
    assert_eq!(r.error(), "invalid_request");
    idp.revoke_all();
    assert_eq!(refresh(&idp, rt).error(), "invalid_grant");
    assert_eq!(idp.counters().families_revoked, 1);

    let idp = start(IdpConfig {
        refresh_token_ttl: 0,
        device_interval: Some(0),
        ..IdpConfig::default()
    });
    let t = login(&idp);
    assert!(!idp.introspect(str_of(&t, "refresh_token")));
    assert_eq!(
        refresh(&idp, str_of(&t, "refresh_token")).error(),
        "invalid_grant"
    );
}

#[test]
fn organization_and_audience_are_accepted_and_recorded() {
    let idp = start(fast());
    let t = login(&idp);
    idp.reset_counters();
    let r = post(
        &token_url(&idp),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", str_of(&t, "refresh_token")),
            ("client_id", CLIENT),
            ("organization", "org_acme"),
            ("audience", "https://api.example"),
        ],
    );
    assert_eq!(r.status, 200);
    let log = idp.requests();
    assert_eq!(log.len(), 1);
    let rec = &log[0];
    assert_eq!(rec.grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(rec.values["organization"], "org_acme");
    assert_eq!(rec.values["audience"], "https://api.example");
    assert_eq!(rec.values["client_id"], CLIENT);
    assert!(rec.params.contains(&"refresh_token".to_string()));
    assert!(!rec.values.contains_key("refresh_token"));
    assert!(!serde_json::to_string(&log).unwrap().contains("rt_"));
}

#[test]
fn access_token_ttl_can_change_at_run_time() {
    let idp = start(fast());
    idp.set_access_token_ttl(60);
    let t = login(&idp);
    assert_eq!(t["expires_in"], 60);
    idp.set_access_token_ttl(0);
    let t = refresh(&idp, str_of(&t, "refresh_token")).json();
    assert_eq!(t["expires_in"], 0);
    assert!(!idp.introspect(str_of(&t, "access_token")));
}
