//! The store lock is bounded by `lock_timeout` (exit 61); readers of a fresh token never
//! touch it.

use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::support::TestEnv;

/// Hold an exclusive flock(2) on the store's lock file, as a stuck refresher would.
fn hold_lock(env: &TestEnv) -> Flock<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.lock_file())
        .expect("open the lock file");
    Flock::lock(f, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("take the lock")
}

const FLOCK_1S: [(&str, &str); 2] = [("QLAM_LOCK", "flock"), ("QLAM_LOCK_TIMEOUT", "1s")];

#[test]
fn a_held_lock_times_out_with_exit_61() {
    let env = TestEnv::new();
    env.login();
    assert!(env.lock_file().is_file(), "login creates the lock file");
    let guard = hold_lock(&env);

    // A fresh token needs no lock.
    env.run_env(&["token"], &FLOCK_1S).expect_code(0);

    env.set_remaining(-30.0);
    let r = env.run_env(&["token"], &FLOCK_1S);
    r.expect_failure(61);
    assert!(
        r.elapsed >= Duration::from_millis(900) && r.elapsed < Duration::from_secs(10),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("lock_timeout"),
        "the hint names the setting: {r:?}"
    );
    assert_eq!(env.idp().counters().refresh_requests, 0);

    drop(guard);
    env.run_env(&["token"], &FLOCK_1S).expect_code(0);
    assert_eq!(env.idp().counters().refresh_requests, 1);
}

#[test]
fn a_held_lock_serves_a_still_valid_token_with_a_warning() {
    let env = TestEnv::new();
    env.login();
    let (at, _) = env.tokens();
    let _guard = hold_lock(&env);
    // Valid for 100 s more, but short of the default min-ttl: like an IdP failure, a stuck
    // lock should leave the job with the still-valid token and a warning.
    env.set_remaining(100.0);
    let r = env.run_env(&["token"], &FLOCK_1S);
    r.expect_code(0);
    assert!(r.stdout == format!("{at}\n"));
    assert!(r.stderr.contains("warning"), "{r:?}");
}
