//! Every fault the test IdP can inject, on the token endpoint during a due refresh: transient
//! faults are retried within the deadline; a persistent outage ends in exit 50 (or 11 when
//! the IdP cannot be reached), is recorded in the store and shared with the next process;
//! `invalid_grant` is exit 41 and keeps the file; a still-valid token is served with a
//! warning when the refresh fails (`stale_or` in single_flight.rs).

use std::time::Duration;

use qlam_test_idp::{Endpoint, Fault};

use crate::support::{TestEnv, closed_port_url, now_unix, parse_iso_utc};

/// Logged in, with an access token that has expired: `token` must refresh.
fn expired_env() -> TestEnv {
    let env = TestEnv::new();
    env.login();
    env.set_remaining(-30.0);
    env
}

/// Logged in, with an access token that is still valid but below the default min-ttl.
fn due_env() -> TestEnv {
    let env = TestEnv::new();
    env.login();
    env.set_remaining(100.0);
    env
}

/// `token` succeeded with a renewed token after `requests` refresh requests.
#[track_caller]
fn assert_renewed(env: &TestEnv, r: &crate::support::Run, old: &(String, String), requests: u64) {
    r.expect_code(0);
    let new = env.tokens();
    assert!(
        new.0 != old.0 && new.1 != old.1,
        "the tokens were not renewed"
    );
    assert!(
        r.stdout == format!("{}\n", new.0),
        "token did not print the new token"
    );
    let c = env.idp().counters();
    assert_eq!(c.refresh_requests, requests, "refresh requests");
    assert_eq!(c.refresh_ok, 1);
    assert!(
        env.idp().introspect(&new.1),
        "the stored refresh token is live"
    );
    assert!(env.store()["extra"]["qlam_hpc"]["last_error"].is_null());
    assert_eq!(c.families_revoked, 0);
}

#[test]
fn server_error_twice_then_ok_succeeds_after_retries() {
    let env = expired_env();
    let old = env.tokens();
    env.idp()
        .push_fault(Endpoint::Token, Fault::Status(503), Some(2));
    let r = env.run(&["token"]);
    assert_renewed(&env, &r, &old, 3);
    assert_eq!(env.idp().counters().faults_injected, 2);
    assert_eq!(r.stderr, "", "a recovered refresh is silent");
}

#[test]
fn rate_limited_with_retry_after_succeeds_after_waiting() {
    let env = expired_env();
    let old = env.tokens();
    env.idp().push_fault(
        Endpoint::Token,
        Fault::RateLimit {
            retry_after_secs: 1,
        },
        Some(1),
    );
    let r = env.run(&["token"]);
    assert_renewed(&env, &r, &old, 2);
    assert!(
        r.elapsed >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured ({:?})",
        r.elapsed
    );
}

#[test]
fn latency_below_the_deadline_succeeds() {
    let env = expired_env();
    let old = env.tokens();
    env.idp().push_fault(
        Endpoint::Token,
        Fault::Latency(Duration::from_millis(1500)),
        Some(1),
    );
    let r = env.run_env(&["token"], &[("QLAM_REFRESH_DEADLINE", "10s")]);
    assert_renewed(&env, &r, &old, 1);
    assert!(r.elapsed >= Duration::from_millis(1500));
}

#[test]
fn dropped_connection_once_succeeds() {
    let env = expired_env();
    let old = env.tokens();
    env.idp().push_fault(Endpoint::Token, Fault::Drop, Some(1));
    let r = env.run(&["token"]);
    assert_renewed(&env, &r, &old, 2);
}

#[test]
fn malformed_json_once_succeeds() {
    let env = expired_env();
    let old = env.tokens();
    env.idp()
        .push_fault(Endpoint::Token, Fault::MalformedJson, Some(1));
    let r = env.run(&["token"]);
    assert_renewed(&env, &r, &old, 2);
}

#[test]
fn persistent_server_errors_end_in_exit_50_shared_through_the_store() {
    let env = expired_env();
    let before = env.store();
    env.idp()
        .push_fault(Endpoint::Token, Fault::Status(503), None);
    let deadline = [("QLAM_REFRESH_DEADLINE", "3s")];

    let r = env.run_env(&["token"], &deadline);
    r.expect_failure(50);
    assert!(
        r.elapsed < Duration::from_secs(6),
        "the deadline bounds the whole refresh: {:?}",
        r.elapsed
    );
    assert!(r.stderr.contains("503"), "{r:?}");
    let attempts = env.idp().counters().refresh_requests;
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} attempts: the refresh should be retried a few times"
    );

    // Tokens untouched; the failure recorded for the next process.
    let after = env.store();
    assert!(
        after["extra"]["token_data"] == before["extra"]["token_data"],
        "the tokens changed"
    );
    assert!(after["data"] == before["data"]);
    let rec = &after["extra"]["qlam_hpc"]["last_error"];
    assert_eq!(rec["kind"], "idp_server", "{rec}");
    assert!(rec["message"].as_str().unwrap().contains("503"), "{rec}");
    let at = parse_iso_utc(rec["at"].as_str().unwrap());
    assert!((now_unix() - at).abs() < 30.0, "{rec}");
    assert!(rec["refresh_token_fp"].is_string(), "{rec}");
    assert!(
        !crate::support::has_secret(&rec.to_string()),
        "the record holds no token"
    );
    assert_eq!(
        after["extra"]["qlam_hpc"]["generation"].as_u64(),
        before["extra"]["qlam_hpc"]["generation"]
            .as_u64()
            .map(|g| g + 1),
        "recording the failure is a write"
    );

    // The next process reuses the recorded failure: no IdP call, same exit code, quickly.
    let calls = env.idp_calls();
    let r2 = env.run_env(&["token"], &deadline);
    r2.expect_failure(50);
    assert_eq!(
        env.idp_calls(),
        calls,
        "a recorded outage must not be retried by every process"
    );
    assert!(r2.elapsed < Duration::from_secs(2), "{:?}", r2.elapsed);
    assert!(r2.stderr.contains("recorded"), "{r2:?}");

    // status shows it, and the login is still usable (the refresh token was not rejected).
    let s = env.run(&["-o", "json", "status"]).expect_code(0).json();
    assert!(
        s["last_error"].as_str().is_some_and(|e| e.contains("503")),
        "{s}"
    );
    let text = env.run(&["status"]);
    assert!(
        text.stdout.lines().any(|l| l.starts_with("last error")),
        "{text:?}"
    );
}

#[test]
fn a_rejected_refresh_token_is_exit_41_and_the_file_is_kept() {
    let env = expired_env();
    let before = env.store();
    env.idp().revoke_all();

    let r = env.run(&["token"]);
    r.expect_failure(41);
    assert!(
        r.stderr.contains("qlam-hpc login"),
        "the hint says to log in again: {r:?}"
    );
    assert!(r.stderr.contains("invalid_grant"), "{r:?}");
    assert!(
        env.store_file().is_file(),
        "the credentials file must never be deleted"
    );
    let after = env.store();
    assert!(after["extra"]["token_data"] == before["extra"]["token_data"]);
    assert_eq!(
        after["extra"]["qlam_hpc"]["last_error"]["kind"],
        "login_required"
    );
    assert_eq!(
        env.idp().counters().refresh_requests,
        1,
        "invalid_grant is not retried"
    );

    // Recorded: the next processes do not spend requests on a dead login.
    let calls = env.idp_calls();
    for args in [
        &["token"][..],
        &["env"],
        &["refresh"],
        &["exec", "--", "true"],
    ] {
        let r = env.run(args);
        r.expect_failure(41);
        assert!(r.stderr.contains("qlam-hpc login"), "{r:?}");
    }
    assert_eq!(env.idp_calls(), calls);
    env.run(&["status"]).expect_code(41);

    // A new login clears it.
    env.login();
    env.run(&["token"]).expect_code(0);
    env.run(&["status"]).expect_code(0);
    assert!(env.store()["extra"]["qlam_hpc"]["last_error"].is_null());
}

#[test]
fn unreachable_idp_is_exit_11_when_a_refresh_is_due() {
    let env = expired_env();
    let closed = closed_port_url();
    let r = env.run_env(
        &["token"],
        &[
            ("QLAM_AUTH_BASE_URL", &closed),
            ("QLAM_REFRESH_DEADLINE", "2s"),
        ],
    );
    r.expect_failure(11);
    assert!(r.elapsed < Duration::from_secs(30), "{:?}", r.elapsed);
}

#[test]
fn idp_going_down_after_login_is_exit_11_and_fresh_tokens_still_work() {
    let mut env = TestEnv::new();
    env.login();
    // After a first refresh discovery is cached beside the store, so only the token
    // endpoint is missed once the IdP is gone.
    env.run(&["refresh", "--force"]).expect_code(0);
    env.stop_idp();
    let fresh = env.run(&["token"]);
    fresh.expect_code(0);
    assert_eq!(fresh.stderr, "", "a fresh token needs no IdP");

    env.set_remaining(-30.0);
    let r = env.run_env(&["token"], &[("QLAM_REFRESH_DEADLINE", "2s")]);
    r.expect_failure(11);
    assert!(r.elapsed < Duration::from_secs(8), "{:?}", r.elapsed);
    assert!(
        r.stderr.contains("HTTPS_PROXY") || r.stderr.contains("doctor"),
        "{r:?}"
    );
    assert_eq!(
        env.store()["extra"]["qlam_hpc"]["last_error"]["kind"],
        "network"
    );
    // Shared with the next process, which fails fast.
    let r2 = env.run(&["token"]);
    r2.expect_failure(11);
    assert!(r2.elapsed < Duration::from_secs(2), "{:?}", r2.elapsed);
}

#[test]
fn discovery_outage_at_the_first_refresh_is_shared_through_the_store() {
    let env = expired_env();
    // Without a cached discovery document the refresh must fetch it first.
    for e in std::fs::read_dir(env.credentials_dir()).unwrap().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("qlam-hpc-discovery-")
        {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    env.idp()
        .push_fault(Endpoint::Discovery, Fault::Status(503), None);
    let r = env.run_env(&["token"], &[("QLAM_REFRESH_DEADLINE", "3s")]);
    r.expect_failure(50);
    assert!(r.stderr.contains("503"), "{r:?}");
    let calls = env.idp_calls();
    let r2 = env.run_env(&["token"], &[("QLAM_REFRESH_DEADLINE", "3s")]);
    r2.expect_failure(50);
    assert_eq!(
        env.idp_calls(),
        calls,
        "the next process must reuse the recorded failure"
    );
    assert!(!env.store()["extra"]["qlam_hpc"]["last_error"].is_null());
}

// ---- a still-valid token when the refresh fails (stale_or) ----

#[test]
fn failed_refresh_serves_the_still_valid_token_with_a_warning() {
    let env = due_env();
    let (at, rt) = env.tokens();
    env.idp()
        .push_fault(Endpoint::Token, Fault::Status(503), None);
    let deadline = [("QLAM_REFRESH_DEADLINE", "2s")];

    let r = env.run_env(&["token"], &deadline);
    r.expect_code(0);
    assert!(
        r.stdout == format!("{at}\n"),
        "the old, still valid token should be printed"
    );
    assert!(r.stderr.starts_with("qlam-hpc: warning: "), "{r:?}");
    assert!(
        r.stderr
            .contains("using the current token, which expires in"),
        "{r:?}"
    );
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(env.idp().counters().refresh_requests >= 1);
    assert!(
        env.tokens() == (at.clone(), rt.clone()),
        "the tokens must not change"
    );
    assert_eq!(
        env.store()["extra"]["qlam_hpc"]["last_error"]["kind"],
        "idp_server"
    );

    // The next process serves the same token from the record, without calling the IdP.
    let calls = env.idp_calls();
    let r2 = env.run_env(&["token"], &deadline);
    r2.expect_code(0);
    assert!(r2.stdout == r.stdout);
    assert!(r2.stderr.contains("warning"), "{r2:?}");
    assert_eq!(env.idp_calls(), calls);

    // -q silences the warning, not the token.
    let q = env.run_env(&["-q", "token"], &deadline);
    q.expect_code(0);
    assert!(q.stdout == r.stdout);
    assert_eq!(q.stderr, "");

    // env and exec get the token too.
    env.run_env(&["env"], &deadline).expect_code(0);
    env.run_env(&["exec", "--", "true"], &deadline)
        .expect_code(0);

    // --force asks for a real renewal: the failure is an error even though the token is valid.
    let f = env.run_env(&["refresh", "--force"], &deadline);
    f.expect_failure(50);
}

#[test]
fn refresh_that_fails_while_the_token_is_still_valid_is_reported() {
    let env = due_env();
    env.idp()
        .push_fault(Endpoint::Token, Fault::Status(503), None);
    let r = env.run_env(&["refresh"], &[("QLAM_REFRESH_DEADLINE", "2s")]);
    assert_ne!(
        r.code,
        Some(0),
        "a keeper must see that its refresh failed: {r:?}"
    );
    assert!(r.stderr.contains("refresh failed"), "{r:?}");
    assert!(r.stderr.contains("503"), "{r:?}");
}

#[test]
fn refresh_that_fails_while_the_token_is_still_valid_exits_with_the_failure_code() {
    let env = due_env();
    env.idp()
        .push_fault(Endpoint::Token, Fault::Status(503), None);
    let r = env.run_env(&["refresh"], &[("QLAM_REFRESH_DEADLINE", "2s")]);
    r.expect_code(50);
}

#[test]
fn rejected_refresh_token_with_a_still_valid_token_warns() {
    let env = due_env();
    let (at, _) = env.tokens();
    env.idp().revoke_all();
    let r = env.run(&["token"]);
    r.expect_code(0);
    assert!(r.stdout == format!("{at}\n"));
    assert!(r.stderr.contains("warning"), "{r:?}");
    assert!(r.stderr.contains("rejected the refresh token"), "{r:?}");
    assert_eq!(
        env.store()["extra"]["qlam_hpc"]["last_error"]["kind"],
        "login_required"
    );
    assert_eq!(env.idp().counters().refresh_requests, 1);
    // Until the token expires the next processes get it from the store without a request...
    env.run(&["token"]).expect_code(0);
    assert_eq!(env.idp().counters().refresh_requests, 1);
    // ...and then a login is required.
    env.set_remaining(-1.0);
    env.run(&["token"]).expect_failure(41);
    assert_eq!(env.idp().counters().refresh_requests, 1);
}

#[test]
fn rejected_refresh_token_warning_says_to_log_in() {
    let env = due_env();
    env.idp().revoke_all();
    let r = env.run(&["token"]);
    r.expect_code(0);
    assert!(
        r.stderr.contains("qlam-hpc login"),
        "the warning should say what to do: {r:?}"
    );
}
