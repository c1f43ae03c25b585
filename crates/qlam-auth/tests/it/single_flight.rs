//! Single-flight refresh (DESIGN §6) through `Session::ensure` against the in-process test
//! IdP: the hot path touches neither lock nor network, a due token is refreshed exactly
//! once however many callers race, failures are recorded and reused, and a writer that
//! rotated the tokens behind our back never loses them to us.
//!
//! "Due" is reached by running a session's clock ahead (`Ctx::clock_offset_secs`), not by
//! sleeping; the IdP's own clock is real, so its refresh tokens stay valid.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use qlam_auth::ErrorKind;
use qlam_auth::flows::TokenResponse;
use qlam_auth::session::Session;
use qlam_auth::store::StoreFile;
use qlam_auth::store::single_flight::Source;
use qlam_test_idp::{Endpoint, Fault, IdpConfig};

use crate::support::{World, access_fp, refresh_fp};

const MIN_TTL: Duration = Duration::from_secs(300);

/// Wait until `cond` holds (polling), or fail after `within`.
#[track_caller]
fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Write `tokens` into the store as a foreign writer would, holding no lock.
fn write_behind_our_back(s: &Session, tokens: &TokenResponse, sent_at: f64) -> StoreFile {
    let prev = s.store.read().unwrap();
    let file = StoreFile::from_tokens(&s.store.context, tokens, sent_at, sent_at, prev.as_ref());
    s.store.write(&file).unwrap();
    file
}

#[test]
fn a_fresh_token_comes_from_the_file_without_lock_or_network() {
    let w = World::new("sf-fresh", 3600);
    let login = w.login();
    let s = w.session_with(0, &[("QLAM_LOCK_TIMEOUT", "1s")]);
    // Someone holds the store lock: a hot path that locked would time out.
    let guard = qlam_auth::store::acquire(&s.store.lock_file, &s.lock_options()).unwrap();
    let got = s.ensure(MIN_TTL, false).unwrap();
    drop(guard);
    assert_eq!(got.source, Source::Cache);
    assert!(got.warning.is_none());
    assert_eq!(access_fp(&got.file), access_fp(&login));
    assert_eq!(
        w.idp.counters().discovery,
        0,
        "no discovery on the hot path"
    );
    assert_eq!(
        w.idp.counters().token_requests,
        1,
        "only the login's own request"
    );

    // With the IdP gone the answer is the same.
    drop(w.idp);
    let got = Session::new(s.ctx.clone(), s.settings.clone()).ensure(MIN_TTL, false);
    assert_eq!(got.unwrap().source, Source::Cache);
}

#[test]
fn a_due_token_is_refreshed_once_and_rotated() {
    let w = World::new("sf-due", 3600);
    let login = w.login();
    let old_rt = login.token().unwrap().refresh_token.clone().unwrap();
    let s = w.session(3400); // 200 s left < 300 s
    let got = s.ensure(MIN_TTL, false).unwrap();
    assert_eq!(got.source, Source::Renewed);
    let c = w.idp.counters();
    assert_eq!((c.refresh_requests, c.refresh_ok), (1, 1));
    assert_ne!(access_fp(&got.file), access_fp(&login));
    assert_ne!(
        refresh_fp(&got.file),
        refresh_fp(&login),
        "rotation: a new refresh token"
    );

    let stored = s.store.read().unwrap().unwrap();
    assert_eq!(access_fp(&stored), access_fp(&got.file));
    assert_eq!(stored.generation(), login.generation() + 1);
    assert_eq!(crate::support::mode(&s.store.lock_file), 0o600);
    let meta = stored.meta().unwrap();
    assert_eq!(meta.grant_type.as_deref(), Some("refresh_token"));
    let by = meta.refreshed_by.as_ref().unwrap();
    assert_eq!(
        (by.host.as_str(), by.pid),
        (s.ctx.hostname.as_str(), s.ctx.pid)
    );
    assert!(meta.login_at.is_some(), "the login time is kept");
    assert!(meta.last_error.is_none());
    // The old refresh token is spent, the new one is live.
    assert!(!w.idp.introspect(old_rt.expose()));
    assert!(
        w.idp.introspect(
            stored
                .token()
                .unwrap()
                .refresh_token
                .as_ref()
                .unwrap()
                .expose()
        )
    );
    // created_at was taken before the request: the stored expiry errs early.
    let left = stored.expires_at_unix().unwrap() - s.ctx.now_unix();
    assert!(left <= 3600.0 && left > 3500.0, "{left}");

    // Fresh again: the next call is served from the file.
    let again = w.session(3400).ensure(MIN_TTL, false).unwrap();
    assert_eq!(again.source, Source::Cache);
    assert_eq!(w.idp.counters().refresh_requests, 1);
}

#[test]
fn forced_refresh_renews_a_fresh_token() {
    let w = World::new("sf-force", 3600);
    let login = w.login();
    let got = w.session(0).ensure(MIN_TTL, true).unwrap();
    assert_eq!(got.source, Source::Renewed);
    assert_ne!(access_fp(&got.file), access_fp(&login));
    assert_eq!(w.idp.counters().refresh_ok, 1);
}

#[test]
fn sixteen_sessions_racing_cause_exactly_one_refresh() {
    const N: usize = 16;
    let w = Arc::new(World::new("sf-herd", 3600));
    w.login();
    // Slow the refresh down so that every racer reads the stale file before it is replaced.
    w.idp.push_fault(
        Endpoint::Token,
        Fault::Latency(Duration::from_millis(1500)),
        Some(1),
    );
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|_| {
            let (w, barrier) = (w.clone(), barrier.clone());
            std::thread::spawn(move || {
                let s = w.session(3400);
                barrier.wait();
                let got = s.ensure(MIN_TTL, false).unwrap();
                (got.source, access_fp(&got.file))
            })
        })
        .collect();
    let results: Vec<(Source, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let c = w.idp.counters();
    assert_eq!(c.refresh_requests, 1, "exactly one refresh for {N} racers");
    assert_eq!(c.families_revoked, 0);
    let renewed = results
        .iter()
        .filter(|(s, _)| *s == Source::Renewed)
        .count();
    let by_other = results
        .iter()
        .filter(|(s, _)| *s == Source::RenewedByOther)
        .count();
    assert_eq!((renewed, by_other), (1, N - 1), "{results:?}");
    let token = &results[0].1;
    assert!(
        results.iter().all(|(_, t)| t == token),
        "everyone got the same token"
    );
    let s = w.session(0);
    assert_eq!(&access_fp(&s.store.read().unwrap().unwrap()), token);
    assert_eq!(
        crate::support::temp_files(&s.store.dir),
        Vec::<String>::new()
    );
    assert_eq!(crate::support::mode(&s.store.file), 0o600);
}

#[test]
fn min_ttl_beyond_half_the_lifetime_is_capped() {
    let w = World::new("sf-cap", 120);
    w.login();
    // Asking for an hour of a 2-minute token: capped at 60 s, so no refresh storm.
    for _ in 0..5 {
        let got = w
            .session(0)
            .ensure(Duration::from_secs(3600), false)
            .unwrap();
        assert_eq!(got.source, Source::Cache);
    }
    assert_eq!(w.idp.counters().refresh_requests, 0);
    // Past half the lifetime: one refresh, then the new token satisfies everyone again.
    let got = w
        .session(70)
        .ensure(Duration::from_secs(3600), false)
        .unwrap();
    assert_eq!(got.source, Source::Renewed);
    for _ in 0..5 {
        let got = w
            .session(70)
            .ensure(Duration::from_secs(3600), false)
            .unwrap();
        assert_eq!(got.source, Source::Cache);
    }
    assert_eq!(w.idp.counters().refresh_requests, 1);
}

#[test]
fn a_token_renewed_by_another_writer_while_we_waited_is_taken_even_if_short() {
    let w = World::new("sf-short", 3600);
    w.login();
    let waiter = w.session(3400);
    // Hold the store lock as the other writer, so the waiter blocks after its lockless read.
    let guard = qlam_auth::store::acquire(&waiter.store.lock_file, &waiter.lock_options()).unwrap();
    let handle = std::thread::spawn(move || {
        let got = waiter.ensure(MIN_TTL, false).unwrap();
        (
            got.source,
            access_fp(&got.file),
            got.file.expires_at_unix().unwrap() - waiter.ctx.now_unix(),
        )
    });
    std::thread::sleep(Duration::from_millis(700));
    // The other writer's token is valid but has less than min_ttl (and less than half its
    // lifetime) left: 60 s tokens, requested 40 s ago by the waiter's clock.
    let (mut tokens, _) = w.tokens();
    tokens.expires_in = Some(60);
    let writer = w.session(3400);
    let sent = writer.ctx.now_unix() - 40.0;
    let theirs = write_behind_our_back(&writer, &tokens, sent);
    drop(guard);
    let (source, token, left) = handle.join().unwrap();
    assert_eq!(source, Source::RenewedByOther);
    assert_eq!(token, access_fp(&theirs));
    assert!(left > 0.0 && left < 30.0, "{left}");
    assert_eq!(
        w.idp.counters().refresh_requests,
        0,
        "the waiter did not refresh again"
    );
}

#[test]
fn invalid_grant_records_login_required_keeps_the_file_and_stops_calling() {
    let w = World::new("sf-invalid", 3600);
    w.login();
    w.idp.revoke_all();
    let s = w.session(4000); // expired
    let err = s.ensure(MIN_TTL, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err:?}");
    assert_eq!(err.exit_code(), 41);
    assert!(err.hint().unwrap().contains("qlam-hpc login"), "{err:?}");
    assert_eq!(w.idp.counters().refresh_requests, 1);

    assert!(
        s.store.file.exists(),
        "the credentials file is never deleted"
    );
    let stored = s.store.read().unwrap().unwrap();
    let rec = stored
        .meta()
        .unwrap()
        .last_error
        .clone()
        .expect("a recorded failure");
    assert_eq!(rec.kind, "login_required");
    assert_eq!(
        rec.refresh_token_fp.as_deref(),
        Some(refresh_fp(&stored).as_str())
    );
    assert!(
        stored.token().unwrap().refresh_token.is_some(),
        "tokens untouched"
    );
    assert!(!s.status().unwrap().usable);

    // Later callers, even long after, get the same answer without asking the IdP.
    for offset in [4000, 4100, 90_000] {
        let err = w.session(offset).ensure(MIN_TTL, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err:?}");
    }
    assert_eq!(w.idp.counters().refresh_requests, 1);

    // A new login clears the record.
    w.login();
    let got = w.session(0).ensure(MIN_TTL, false).unwrap();
    assert_eq!(got.source, Source::Cache);
    assert!(got.file.meta().unwrap().last_error.is_none());
}

#[test]
fn a_rejected_refresh_still_serves_a_valid_token_with_a_warning() {
    let w = World::new("sf-invalid-valid", 3600);
    let login = w.login();
    w.idp.revoke_all();
    let got = w.session(3400).ensure(MIN_TTL, false).unwrap();
    assert_eq!(got.source, Source::Stale);
    assert!(
        got.warning.as_deref().unwrap().contains("rejected"),
        "{:?}",
        got.warning
    );
    assert_eq!(access_fp(&got.file), access_fp(&login));
    // ...but a forced refresh is an error.
    let err = w.session(3400).ensure(MIN_TTL, true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert_eq!(
        w.idp.counters().refresh_requests,
        1,
        "the recorded rejection is reused"
    );
}

#[test]
fn a_transient_failure_is_recorded_and_reused_within_the_window() {
    let w = World::new("sf-transient", 3600);
    w.login();
    w.idp.push_fault(Endpoint::Token, Fault::Status(503), None);
    let fast = [("QLAM_REFRESH_DEADLINE", "1s")];
    let started = Instant::now();
    let err = w
        .session_with(4000, &fast)
        .ensure(MIN_TTL, false)
        .unwrap_err();
    // Six attempts with back-off would take ~8 s: the deadline cut the retries short.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::IdpServer, "{err:?}");
    let tried = w.idp.counters().refresh_requests;
    assert!(tried >= 1, "{tried}");
    let stored = w.session(0).store.read().unwrap().unwrap();
    assert_eq!(
        stored.meta().unwrap().last_error.as_ref().unwrap().kind,
        "idp_server"
    );

    // Within the 30 s window: the recorded failure, no request.
    for offset in [4001, 4020] {
        let err = w
            .session_with(offset, &fast)
            .ensure(MIN_TTL, false)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::IdpServer, "{err:?}");
    }
    assert_eq!(w.idp.counters().refresh_requests, tried);

    // After the window, with the IdP healthy again: a refresh that clears the record.
    w.idp.clear_faults();
    let got = w.session_with(4040, &fast).ensure(MIN_TTL, false).unwrap();
    assert_eq!(got.source, Source::Renewed);
    assert!(got.file.meta().unwrap().last_error.is_none());
    assert_eq!(w.idp.counters().refresh_ok, 1);
}

#[test]
fn a_transient_failure_with_a_valid_token_is_stale_not_an_error() {
    let w = World::new("sf-transient-valid", 3600);
    let login = w.login();
    w.idp.push_fault(Endpoint::Token, Fault::Status(502), None);
    let fast = [("QLAM_REFRESH_DEADLINE", "1s")];
    let got = w.session_with(3400, &fast).ensure(MIN_TTL, false).unwrap();
    assert_eq!(got.source, Source::Stale);
    assert_eq!(access_fp(&got.file), access_fp(&login));
    let tried = w.idp.counters().refresh_requests;
    let got = w.session_with(3410, &fast).ensure(MIN_TTL, false).unwrap();
    assert_eq!(got.source, Source::Stale);
    assert_eq!(
        w.idp.counters().refresh_requests,
        tried,
        "reused within the window"
    );
}

#[test]
fn an_unreachable_idp_before_discovery_is_recorded_too() {
    let w = World::new("sf-unreachable", 3600);
    w.login();
    let port = w.idp.local_addr().port();
    drop(w.idp);
    // No discovery cache yet (the login was saved without the network), and nothing listens.
    let sb = &w.sb;
    let env = [
        ("QLAM_AUTH_BASE_URL", format!("http://127.0.0.1:{port}")),
        ("QLAM_REFRESH_DEADLINE", "1s".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let session = |offset| {
        let mut ctx = sb.ctx(&env);
        ctx.clock_offset_secs = offset;
        let st = qlam_auth::config::load(&ctx, &Default::default()).unwrap();
        Session::new(ctx, st)
    };
    let err = session(4000).ensure(MIN_TTL, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err:?}");
    // DESIGN §6 step 4: one outage costs the IdP a handful of requests, not one per task.
    let stored = session(0).store.read().unwrap().unwrap();
    let rec = stored.meta().and_then(|m| m.last_error.clone());
    assert_eq!(rec.map(|r| r.kind).as_deref(), Some("network"));
}

/// DESIGN §6 step 7: another writer (whose lock did not exclude us) stores tokens of its own
/// while our refresh is in flight and our refresh token gets rejected.
fn rotation_race(
    their_age: f64,
) -> (
    World,
    Session,
    StoreFile,
    qlam_auth::Result<qlam_auth::store::single_flight::Ensured>,
) {
    let w = World::new("sf-rotate", 3600);
    let ours = w.login();
    let our_rt = ours.token().unwrap().refresh_token.clone().unwrap();
    let (theirs, _) = w.tokens(); // a second login: another token family
    w.idp.push_fault(
        Endpoint::Token,
        Fault::Latency(Duration::from_millis(1500)),
        Some(1),
    );
    let before = w.idp.counters().refresh_requests;
    let loser = w.session(3400);
    let handle = std::thread::spawn(move || {
        let r = loser.ensure(MIN_TTL, false);
        (loser, r)
    });
    wait_for(
        Duration::from_secs(10),
        "our refresh to reach the IdP",
        || w.idp.counters().refresh_requests > before,
    );
    // While our request sleeps in the IdP: our login is revoked (so we get invalid_grant)
    // and the other writer stores its tokens, holding no lock.
    crate::support::revoke(&w.idp, &our_rt);
    let writer = w.session(3400);
    let written = write_behind_our_back(&writer, &theirs, writer.ctx.now_unix() - their_age);
    let (loser, result) = handle.join().unwrap();
    (w, loser, written, result)
}

#[test]
fn a_loser_of_the_rotation_race_takes_the_winners_valid_tokens() {
    let (w, loser, theirs, result) = rotation_race(0.0);
    let got = result.unwrap();
    assert_eq!(got.source, Source::RenewedByOther);
    assert_eq!(access_fp(&got.file), access_fp(&theirs));
    let stored = loser.store.read().unwrap().unwrap();
    assert_eq!(
        refresh_fp(&stored),
        refresh_fp(&theirs),
        "the winner's refresh token is kept"
    );
    assert!(
        stored.meta().unwrap().last_error.is_none(),
        "no login_required recorded"
    );
    let rt = stored.token().unwrap().refresh_token.clone().unwrap();
    assert!(
        w.idp.introspect(rt.expose()),
        "the winner's login is still alive"
    );
    assert_eq!(w.idp.counters().refresh_requests, 1);
}

#[test]
fn a_loser_retries_once_with_the_winners_refresh_token_when_their_access_token_expired() {
    let (w, loser, theirs, result) = rotation_race(7200.0);
    let got = result.unwrap();
    assert_eq!(got.source, Source::Renewed);
    let c = w.idp.counters();
    assert_eq!((c.refresh_requests, c.refresh_ok), (2, 1));
    let stored = loser.store.read().unwrap().unwrap();
    assert_eq!(access_fp(&stored), access_fp(&got.file));
    assert_ne!(
        refresh_fp(&stored),
        refresh_fp(&theirs),
        "rotated from the winner's token"
    );
    assert!(
        w.idp.introspect(
            stored
                .token()
                .unwrap()
                .refresh_token
                .as_ref()
                .unwrap()
                .expose()
        )
    );
    assert!(stored.meta().unwrap().last_error.is_none());
    assert_eq!(stored.generation(), theirs.generation() + 1);
}

#[test]
fn a_device_login_end_to_end_sends_the_organization_and_writes_the_qsh_config() {
    let w = World::with_idp(
        "sf-device",
        IdpConfig {
            auto_approve: true,
            device_interval: Some(1),
            ..IdpConfig::default()
        },
    );
    let s = w.session_with(0, &[("QLAM_TENANT", "acme")]);
    struct Quiet;
    impl qlam_auth::flows::device::PollObserver for Quiet {}
    impl qlam_auth::session::LoginObserver for Quiet {
        fn device_authorization(&mut self, _: &qlam_auth::flows::device::DeviceAuthorization) {}
    }
    let file = s.login_device(&mut Quiet).unwrap();
    assert_eq!(
        file.meta().unwrap().grant_type.as_deref(),
        Some("device_code")
    );
    assert!(file.meta().unwrap().login_at.is_some());
    assert!(
        w.sb.qsh_file().exists(),
        "a minimal qsh config for QLAM Core"
    );
    let qsh: serde_json::Value = crate::support::raw_json(&w.sb.qsh_file());
    assert_eq!(qsh["current_context"], serde_json::json!("default"));
    assert_eq!(
        qsh["contexts"][0]["auth_providers"][0]["tenant"],
        serde_json::json!("acme")
    );

    // Refresh, from a new session that reads the qsh file just written.
    let got = w
        .session_with(3400, &[("QLAM_TENANT", "acme")])
        .ensure(MIN_TTL, false)
        .unwrap();
    assert_eq!(got.source, Source::Renewed);

    let reqs = w.idp.requests();
    let device = reqs
        .iter()
        .find(|r| r.endpoint == "device_authorization")
        .unwrap();
    let scope = device.values.get("scope").unwrap();
    assert!(
        scope.split(' ').any(|s| s == "organization:acme"),
        "{scope}"
    );
    assert!(scope.split(' ').any(|s| s == "offline_access"), "{scope}");
    let refresh = reqs
        .iter()
        .find(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .unwrap();
    assert_eq!(
        refresh.values.get("organization").map(String::as_str),
        Some("acme")
    );
}
