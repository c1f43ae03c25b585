//! A herd of array tasks: 100 concurrent `token` processes against one store when a refresh
//! is due must cost the IdP exactly one refresh, and a dead login only a handful of requests.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Instant;

use crate::support::{Run, TestEnv, assert_no_secrets_in_stderr, wait_bounded};

const TASKS: usize = 100;

/// Start every process before waiting for any, then collect them all.
fn herd(env: &TestEnv, vars: &[(&str, &str)]) -> Vec<Run> {
    let start = Instant::now();
    let children: Vec<_> = (0..TASKS)
        .map(|i| {
            let mut c = env.command(&["token", "--min-ttl", "2m"]);
            c.envs(vars.iter().copied())
                .env("SLURM_JOB_ID", "777")
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().expect("spawn a task")
        })
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| wait_bounded(c, start))
        .collect();
    for r in &runs {
        assert_no_secrets_in_stderr(r);
    }
    runs
}

fn one_refresh_for_all(vars: &[(&str, &str)]) {
    let env = TestEnv::new();
    env.login();
    let (old_at, old_rt) = env.tokens();
    // 60 s left: valid, but short of --min-ttl 2m.
    env.set_remaining(60.0);
    let before = env.idp().counters();

    let runs = herd(&env, vars);
    for r in &runs {
        r.expect_code(0);
        assert_eq!(r.stderr, "", "{r:?}");
        assert_eq!(r.stdout.lines().count(), 1);
    }
    let distinct: BTreeSet<&str> = runs.iter().map(|r| r.stdout.as_str()).collect();
    assert_eq!(distinct.len(), 1, "every task must get the same token");
    let (at, rt) = env.tokens();
    assert!(
        distinct.contains(format!("{at}\n").as_str()),
        "the tasks' token is the stored one"
    );
    assert!(at != old_at && rt != old_rt, "the herd did not refresh");

    let c = env.idp().counters();
    assert_eq!(
        c.refresh_requests - before.refresh_requests,
        1,
        "exactly one refresh for the herd"
    );
    assert_eq!(c.families_revoked, 0, "no refresh token was reused");
    assert!(env.idp().introspect(&rt));
    let meta = &env.store()["extra"]["qlam_hpc"];
    assert_eq!(meta["generation"], 2);
    assert!(
        meta["refreshed_by"]["job_id"]
            .as_str()
            .is_some_and(|j| j.starts_with("777_")),
        "{meta}"
    );
}

#[test]
fn hundred_tasks_one_refresh() {
    one_refresh_for_all(&[]);
}

#[test]
fn hundred_tasks_one_refresh_with_lease_locks() {
    one_refresh_for_all(&[("QLAM_LOCK", "lease")]);
}

#[test]
fn hundred_tasks_one_refresh_with_flock() {
    one_refresh_for_all(&[("QLAM_LOCK", "flock")]);
}

/// DESIGN §6 step 3: when the IdP issues tokens shorter than --min-ttl, the waiters take the
/// new token anyway instead of refreshing again one after another.
#[test]
fn hundred_tasks_one_refresh_when_new_tokens_are_shorter_than_min_ttl() {
    let env = TestEnv::new();
    env.login();
    env.set_remaining(60.0);
    env.idp().set_access_token_ttl(90); // less than --min-ttl 2m
    let runs = herd(&env, &[]);
    for r in &runs {
        r.expect_code(0);
    }
    let distinct: BTreeSet<&str> = runs.iter().map(|r| r.stdout.as_str()).collect();
    assert_eq!(distinct.len(), 1);
    assert_eq!(env.idp().counters().refresh_requests, 1);
    assert_eq!(env.store()["extra"]["token_data"]["expires_in"], 90);
    // Later calls cap --min-ttl at half of the new lifetime: served from the store.
    env.run(&["token", "--min-ttl", "2m"]).expect_code(0);
    assert_eq!(env.idp().counters().refresh_requests, 1);
}

#[test]
fn hundred_tasks_against_a_revoked_login() {
    let env = TestEnv::new();
    env.login();
    env.set_remaining(-30.0);
    env.idp().revoke_all();
    let runs = herd(&env, &[]);
    for r in &runs {
        r.expect_failure(41);
        assert!(r.stderr.contains("qlam-hpc login"), "{r:?}");
    }
    let c = env.idp().counters();
    assert!(
        c.refresh_requests >= 1 && c.refresh_requests <= 3,
        "{} refresh requests for a dead login",
        c.refresh_requests
    );
    assert!(env.store_file().is_file(), "the credentials file is kept");
    assert_eq!(
        env.store()["extra"]["qlam_hpc"]["last_error"]["kind"],
        "login_required"
    );
}
