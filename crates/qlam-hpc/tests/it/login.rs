//! `login`: the device flow end to end (JSON events, approval, denial, expiry), what it
//! writes (store 0600 in a 0700 dir, lock file), and its refusal inside batch jobs.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use qlam_test_idp::IdpConfig;
use serde_json::Value;

use crate::support::{
    Run, TestEnv, fast_idp_config, mode, now_unix, snapshot_failure, wait_bounded,
};

fn manual_idp() -> TestEnv {
    TestEnv::with_idp(IdpConfig {
        auto_approve: false,
        ..fast_idp_config()
    })
}

/// Start `login -o json`, hand its first event to `decide`, and collect the rest.
fn login_with(env: &TestEnv, decide: impl FnOnce(&Value)) -> (Value, Run) {
    let mut cmd = env.command(&["login", "--device", "--no-qr", "-o", "json"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let event: Value = serde_json::from_str(&first).expect("the first stdout line is JSON");
    decide(&event);
    let rest = {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    };
    let mut run = wait_bounded(child, start);
    run.stdout = rest;
    crate::support::assert_no_secrets_in_stderr(&run);
    (event, run)
}

#[test]
fn device_login_with_approval() {
    let env = manual_idp();
    let (event, r) = login_with(&env, |e| {
        let code = e["user_code"].as_str().expect("user_code");
        assert_eq!(env.idp().pending_user_codes(), [code.to_string()]);
        assert!(env.idp().approve(code));
    });
    r.expect_code(0);

    let keys: Vec<&String> = event.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "event",
            "expires_in",
            "user_code",
            "verification_uri",
            "verification_uri_complete"
        ],
        "device_authorization event fields (and no device_code)"
    );
    assert_eq!(event["event"], "device_authorization");
    let base = env.base_url();
    assert!(
        event["verification_uri"]
            .as_str()
            .unwrap()
            .starts_with(base)
    );
    assert!(
        event["verification_uri_complete"]
            .as_str()
            .unwrap()
            .contains(event["user_code"].as_str().unwrap())
    );
    assert_eq!(event["expires_in"], 600);

    let last = r.json();
    assert_eq!(last["event"], "logged_in");
    let exp = last["expires_at"].as_i64().unwrap() as f64;
    assert!((exp - (now_unix() + 3600.0)).abs() < 30.0, "{last}");

    assert!(
        r.stderr.contains(qlam_test_idp::APPROVING_USER),
        "login says who: {r:?}"
    );
    assert!(
        r.stderr.contains(&env.store_file().display().to_string()),
        "{r:?}"
    );
    assert_eq!(mode(&env.store_file()), 0o600);
    assert_eq!(mode(&env.credentials_dir()), 0o700);
    assert_eq!(mode(&env.lock_file()), 0o600);
    let s = env.store();
    assert_eq!(s["extra"]["qlam_hpc"]["grant_type"], "device_code");
    assert_eq!(s["extra"]["qlam_hpc"]["generation"], 1);
    assert!(s["extra"]["qlam_hpc"]["login_at"].is_string());
    let (at, rt) = env.tokens();
    assert!(env.idp().introspect(&at) && env.idp().introspect(&rt));
    let c = env.idp().counters();
    assert_eq!((c.device_authorization, c.device_tokens_issued), (1, 1));
    // The default user scope, offline_access included (else no refresh token).
    let device = env
        .idp()
        .requests()
        .into_iter()
        .find(|q| q.endpoint == "device_authorization")
        .unwrap();
    assert_eq!(
        device.values.get("scope").map(String::as_str),
        Some("openid profile email offline_access")
    );
    env.run(&["token"]).expect_code(0);
}

#[test]
fn denied_login_is_exit_41() {
    let env = manual_idp();
    let (_, r) = login_with(&env, |e| {
        assert!(env.idp().deny(e["user_code"].as_str().unwrap()))
    });
    r.expect_code(41);
    assert!(r.stdout.is_empty(), "no logged_in event: {r:?}");
    assert!(r.stderr.contains("denied"), "{r:?}");
    assert!(r.stderr.contains("qlam-hpc login"), "{r:?}");
    assert!(!env.store_file().exists());
}

#[test]
fn expired_device_code_is_exit_41() {
    let env = TestEnv::with_idp(IdpConfig {
        auto_approve: false,
        device_code_ttl: 2,
        ..fast_idp_config()
    });
    let r = env.run(&["login", "--device", "--no-qr"]);
    r.expect_failure(41);
    assert!(r.stderr.contains("expired"), "{r:?}");
    assert!(r.elapsed < Duration::from_secs(10));
    assert!(!env.store_file().exists());
}

#[test]
fn text_login_keeps_stdout_empty_and_draws_a_qr_code() {
    let env = TestEnv::new();
    let r = env.run(&["login", "--device"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "", "progress goes to stderr");
    assert!(r.stderr.contains("To log in, open "), "{r:?}");
    assert!(r.stderr.contains("enter the code: "), "{r:?}");
    assert!(r.stderr.contains("QR code"), "{r:?}");
    assert!(
        r.stderr.contains('█') || r.stderr.contains('▀') || r.stderr.contains('▄'),
        "no QR drawn"
    );

    let r = env.run(&["login", "--device", "--no-qr"]);
    r.expect_code(0);
    assert!(!r.stderr.contains("QR code"), "{r:?}");
    // The grant comes from the configuration when no flag is given.
    env.run(&["login", "--no-qr"]).expect_code(0);
}

#[test]
fn a_new_login_replaces_the_tokens() {
    let env = TestEnv::new();
    env.login();
    let first = env.tokens();
    env.run(&["refresh", "--force"]).expect_code(0);
    env.login();
    let second = env.tokens();
    assert!(first.0 != second.0 && first.1 != second.1);
    let s = env.store();
    assert_eq!(
        s["extra"]["qlam_hpc"]["generation"], 3,
        "a login is a write like any other"
    );
    assert!(
        s["extra"]["qlam_hpc"]["refreshed_at"].is_null(),
        "a login resets the refresh record"
    );
}

#[test]
fn login_replaces_a_corrupt_or_insecure_store_as_the_hint_says() {
    let env = TestEnv::new();
    env.login();
    std::fs::write(env.store_file(), "garbage").unwrap();
    let r = env.run(&["token"]);
    r.expect_failure(60);
    assert!(r.stderr.contains("qlam-hpc login"), "{r:?}");
    env.login();
    env.run(&["token"]).expect_code(0);

    crate::support::chmod(&env.store_file(), 0o644);
    env.run(&["token"]).expect_failure(60);
    env.login();
    assert_eq!(mode(&env.store_file()), 0o600);
    env.run(&["token"]).expect_code(0);
}

fn refused(env: &TestEnv, var: (&str, &str)) -> Run {
    let r = env.run_env(&["login", "--device", "--no-qr"], &[var]);
    r.expect_failure(41);
    assert!(r.stderr.contains("batch job"), "{r:?}");
    assert!(r.stderr.contains("qlam-hpc login"), "{r:?}");
    assert!(r.stderr.contains("login node"), "{r:?}");
    assert_eq!(env.idp_calls(), 0, "no device code may be requested");
    assert!(!env.store_file().exists());
    r
}

#[test]
fn login_refuses_inside_a_slurm_job() {
    let env = TestEnv::new();
    let r = refused(&env, ("SLURM_JOB_ID", "4242"));
    snapshot_failure("login_in_batch_job", &env, &r);
}

#[test]
fn login_refuses_inside_a_pbs_job() {
    let env = TestEnv::new();
    refused(&env, ("PBS_JOBID", "17.pbs-server"));
}
