//! `token` and `env`: the hot path serves the stored token with no IdP request; a due token
//! is refreshed exactly once and the rotated refresh token is stored; `--min-ttl` is parsed
//! strictly and capped at half the IdP's lifetime; output formats.

use crate::support::{TestEnv, assert_not_contains, now_unix, snapshot_failure};

#[test]
fn token_prints_exactly_the_token_and_a_newline() {
    let env = TestEnv::new();
    env.login();
    let (at, _) = env.tokens();
    let r = env.run(&["token"]);
    r.expect_code(0);
    assert!(
        r.stdout == format!("{at}\n"),
        "stdout is not exactly the stored token and a newline"
    );
    assert_eq!(r.stdout.lines().count(), 1);
    assert_eq!(r.stderr, "", "token writes nothing on stderr");
}

#[test]
fn token_from_the_store_makes_no_idp_request_and_no_write() {
    let env = TestEnv::new();
    env.login();
    let before = env.idp_calls();
    let bytes = std::fs::read(env.store_file()).unwrap();
    // No lock either: the node-local lock directory is not even created.
    let runtime = env.root().join("run");
    if runtime.exists() {
        std::fs::remove_dir_all(&runtime).unwrap();
    }
    for _ in 0..5 {
        env.run(&["token"]).expect_code(0);
        env.run(&["env"]).expect_code(0);
    }
    assert_eq!(
        env.idp_calls(),
        before,
        "a fresh token must not touch the IdP"
    );
    assert!(
        std::fs::read(env.store_file()).unwrap() == bytes,
        "the hot path rewrote the store"
    );
    assert!(!runtime.exists(), "the hot path took the node-local lock");
}

#[test]
fn a_due_token_is_refreshed_once_and_the_rotated_refresh_token_is_stored() {
    let env = TestEnv::new();
    env.login();
    let (old_at, old_rt) = env.tokens();
    let gen0 = env.generation();
    // 100 s left is below the default min-ttl (5 min, capped at half of 1 h).
    env.set_remaining(100.0);

    let r = env.run(&["token"]);
    r.expect_code(0);
    assert_eq!(r.stderr, "");
    let (new_at, new_rt) = env.tokens();
    assert!(
        r.stdout == format!("{new_at}\n"),
        "token did not print the stored new token"
    );
    assert!(new_at != old_at, "the access token was not renewed");
    assert!(new_rt != old_rt, "the refresh token was not rotated");
    let c = env.idp().counters();
    assert_eq!((c.refresh_requests, c.refresh_ok), (1, 1));
    assert!(
        !env.idp().introspect(&old_rt),
        "the old refresh token should be spent"
    );
    assert!(
        env.idp().introspect(&new_rt),
        "the stored refresh token must be the live one"
    );
    assert!(env.idp().introspect(&new_at));
    assert_eq!(env.generation(), gen0 + 1);
    assert_eq!(c.families_revoked, 0, "no reuse may have been detected");

    // Fresh again: the next call is served from the store.
    let r2 = env.run(&["token"]);
    r2.expect_code(0);
    assert!(r2.stdout == r.stdout);
    assert_eq!(env.idp().counters().refresh_requests, 1);
}

#[test]
fn min_ttl_decides_when_to_refresh_and_is_capped_at_half_the_lifetime() {
    let env = TestEnv::new(); // 1 h tokens
    env.login();
    let refreshes = || env.idp().counters().refresh_requests;

    env.set_remaining(700.0);
    env.run(&["token", "--min-ttl", "10m"]).expect_code(0);
    assert_eq!(refreshes(), 0, "700 s left satisfies --min-ttl 10m");
    env.run(&["token", "--min-ttl", "15m"]).expect_code(0);
    assert_eq!(refreshes(), 1, "700 s left does not satisfy --min-ttl 15m");

    // 2 h asked of 1 h tokens: capped at 30 min, so a fresh token is enough...
    env.run(&["token", "--min-ttl", "2h"]).expect_code(0);
    assert_eq!(
        refreshes(),
        1,
        "--min-ttl above the lifetime must be capped, not refresh every call"
    );
    // ...and 29 min left is not.
    env.set_remaining(29.0 * 60.0);
    env.run(&["token", "--min-ttl", "2h"]).expect_code(0);
    assert_eq!(refreshes(), 2);

    // QLAM_MIN_TTL is the default for --min-ttl; the flag wins over it.
    env.set_remaining(1000.0);
    env.run_env(&["token"], &[("QLAM_MIN_TTL", "10m")])
        .expect_code(0);
    assert_eq!(refreshes(), 2);
    env.run_env(&["token"], &[("QLAM_MIN_TTL", "20m")])
        .expect_code(0);
    assert_eq!(refreshes(), 3);
    env.set_remaining(1000.0);
    env.run_env(&["token", "--min-ttl", "10m"], &[("QLAM_MIN_TTL", "20m")])
        .expect_code(0);
    assert_eq!(refreshes(), 3);
}

#[test]
fn min_ttl_job_is_the_rest_of_the_slurm_job() {
    let env = TestEnv::new(); // 1 h tokens: min-ttl capped at 30 min
    env.login();
    let refreshes = || env.idp().counters().refresh_requests;
    let job = |end_in: f64| {
        let end = format!("{}", (now_unix() + end_in) as i64);
        env.run_env(
            &["token", "--min-ttl", "job"],
            &[("SLURM_JOB_ID", "99"), ("SLURM_JOB_END_TIME", &end)],
        )
    };
    // 20 min of job left.
    env.set_remaining(1500.0);
    job(1200.0).expect_code(0);
    assert_eq!(refreshes(), 0, "1500 s left covers a job ending in 1200 s");
    env.set_remaining(1000.0);
    job(1200.0).expect_code(0);
    assert_eq!(
        refreshes(),
        1,
        "1000 s left does not cover a job ending in 1200 s"
    );
    // At least 5 minutes, however soon the job ends.
    env.set_remaining(250.0);
    job(60.0).expect_code(0);
    assert_eq!(refreshes(), 2);
    // Outside a job: 1 h, capped at half the token's lifetime.
    env.set_remaining(1500.0);
    env.run(&["token", "--min-ttl", "job"]).expect_code(0);
    assert_eq!(refreshes(), 3);
}

#[test]
fn min_ttl_accepts_the_documented_formats() {
    let env = TestEnv::new();
    env.login();
    for d in ["90s", "15m", "1h", "1d", "300", "1h30m"] {
        env.run(&["token", "--min-ttl", d]).expect_code(0);
        env.run(&["env", "--min-ttl", d]).expect_code(0);
    }
}

#[test]
fn min_ttl_garbage_is_a_usage_error() {
    let env = TestEnv::new();
    env.login();
    let before = env.idp_calls();
    for bad in ["garbage", "5x", "5s5", "1h30", "m", " "] {
        for cmd in [
            &["token"][..],
            &["env"],
            &["refresh"],
            &["exec", "--", "true"],
        ] {
            let mut args = vec![cmd[0], "--min-ttl", bad];
            args.extend_from_slice(&cmd[1..]);
            let r = env.run(&args);
            r.expect_code(2);
            assert!(r.stdout.is_empty(), "{r:?}");
            assert!(
                r.stderr.contains("--min-ttl"),
                "the message names the flag: {r:?}"
            );
            assert!(
                r.stderr.contains("duration"),
                "the message says what is wrong: {r:?}"
            );
        }
    }
    assert_eq!(env.idp_calls(), before);
    snapshot_failure(
        "token_min_ttl_garbage",
        &env,
        &env.run(&["token", "--min-ttl", "garbage"]),
    );
}

#[test]
fn token_json_output() {
    let env = TestEnv::new();
    env.login();
    let (at, _) = env.tokens();
    let r = env.run(&["-o", "json", "token"]);
    r.expect_code(0);
    assert_eq!(r.stderr, "");
    let v = r.json();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["access_token", "expires_at"]);
    assert!(
        v["access_token"].as_str() == Some(at.as_str()),
        "access_token is not the stored one"
    );
    let exp = v["expires_at"]
        .as_i64()
        .expect("expires_at is whole unix seconds") as f64;
    let now = now_unix();
    assert!(
        exp > now + 3500.0 && exp <= now + 3600.0,
        "expires_at {exp} is not about 1 h from now"
    );
}

fn env_lines(env: &TestEnv, shell: &str) -> (String, String, i64) {
    let r = env.run(&["env", "--shell", shell]);
    r.expect_code(0);
    assert_eq!(r.stderr, "");
    let t = env.run(&["-o", "json", "token"]).json();
    let at = t["access_token"].as_str().unwrap().to_string();
    (r.stdout, at, t["expires_at"].as_i64().unwrap())
}

#[test]
fn env_speaks_sh_csh_and_fish() {
    let env = TestEnv::new();
    env.login();

    let (sh, at, exp) = env_lines(&env, "sh");
    assert!(
        sh == format!("export QLAM_ACCESS_TOKEN='{at}';\nexport QLAM_TOKEN_EXPIRES_AT={exp};\n"),
        "sh lines are not as expected: {}",
        crate::support::redact(&sh)
    );
    // The default shell is sh.
    let r = env.run(&["env"]);
    assert!(r.stdout == sh);

    let (csh, _, _) = env_lines(&env, "csh");
    assert!(
        csh == format!("setenv QLAM_ACCESS_TOKEN '{at}';\nsetenv QLAM_TOKEN_EXPIRES_AT {exp};\n"),
        "csh lines are not as expected: {}",
        crate::support::redact(&csh)
    );
    let (fish, _, _) = env_lines(&env, "fish");
    assert!(
        fish == format!(
            "set -gx QLAM_ACCESS_TOKEN '{at}';\nset -gx QLAM_TOKEN_EXPIRES_AT {exp};\n"
        ),
        "fish lines are not as expected: {}",
        crate::support::redact(&fish)
    );
}

#[test]
fn env_output_evaluates_in_sh_to_the_token() {
    let env = TestEnv::new();
    env.login();
    let (at, _) = env.tokens();
    let exp = env.run(&["-o", "json", "token"]).json()["expires_at"]
        .as_i64()
        .unwrap();
    // eval "$(qlam-hpc env)" as a job script would do.
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(r#"eval "$("$0" env)" && printf '%s\n%s\n' "$QLAM_ACCESS_TOKEN" "$QLAM_TOKEN_EXPIRES_AT""#)
        .arg(crate::support::BIN)
        .env_clear()
        .envs(env.base_env());
    let out = c.output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text == format!("{at}\n{exp}\n"),
        "sh did not get the token and expiry from `env`"
    );
    assert_not_contains(&String::from_utf8_lossy(&out.stderr), &at, "stderr");
}
