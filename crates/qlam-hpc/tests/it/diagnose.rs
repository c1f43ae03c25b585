//! `doctor` (config, store, filesystem, lock calls and coherence, `auto`'s choice, IdP, clock),
//! `check --time W [--begin D]` (does the login outlive the job plus a 10 minute margin?),
//! and the `completions` and `man` outputs. FUSE mounts (locks refused, locks node-local) are
//! in tests/e2e/test_doctor_fuse.py.

use std::time::Duration;

use serde_json::Value;

use crate::support::{TestEnv, chmod, has_secret, iso_utc, now_unix, read_json};

// ---- doctor ----

/// One `[level] name detail` line of the text report: (level, detail).
fn line<'a>(out: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    out.lines().find_map(|l| {
        let rest = l.strip_prefix('[')?;
        let (tag, rest) = rest.split_once("] ")?;
        let (n, detail) = rest.split_at(rest.len().min(15));
        (n.trim() == name).then_some((tag.trim(), detail))
    })
}

fn checks(report: &Value) -> Vec<Value> {
    report["checks"].as_array().expect("checks").clone()
}

fn check_named(report: &Value, name: &str) -> Option<Value> {
    checks(report).into_iter().find(|c| c["name"] == name)
}

fn doctor_json(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> (Option<i32>, Value) {
    let mut all = vec!["-o", "json", "doctor"];
    all.extend_from_slice(args);
    let r = env.run_env(&all, vars);
    assert!(!has_secret(&r.stdout), "doctor printed a token: {r:?}");
    (r.code, r.json())
}

fn write_user_toml(env: &TestEnv, text: &str) {
    let p = env.user_config();
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
}

#[test]
fn doctor_on_a_plain_directory() {
    let env = TestEnv::new();
    env.login();
    let r = env.run(&["doctor"]);
    r.expect_code(0);
    assert!(!has_secret(&r.stdout), "doctor printed a token: {r:?}");
    let out = r.stdout.as_str();
    for name in ["config", "store", "lock calls", "lock coherence", "idp"] {
        let (level, _) = line(out, name).unwrap_or_else(|| panic!("no {name} line: {r:?}"));
        assert_eq!(level, "ok", "{name}: {r:?}");
    }
    let (_, store) = line(out, "store").unwrap();
    assert!(
        store.contains(&env.store_file().display().to_string()),
        "{r:?}"
    );
    let (_, calls) = line(out, "lock calls").unwrap();
    assert!(calls.contains("OFD fcntl works"), "{r:?}");
    assert!(calls.contains("lease file works"), "{r:?}");
    let (_, coherent) = line(out, "lock coherence").unwrap();
    assert!(coherent.contains("sees the lock held"), "{r:?}");
    let (fs_level, fs) = line(out, "filesystem").expect("a filesystem line");
    assert_ne!(fs_level, "FAIL", "{r:?}");
    assert!(fs.contains("credentials"), "{r:?}");
    let (_, idp) = line(out, "idp").unwrap();
    assert!(idp.contains(env.base_url()), "{r:?}");
    // The test IdP sends no Date header: the clock check says so and is skipped (the real
    // provider's Date is checked in tests/e2e/test_doctor_fuse.py).
    let (level, clock) = line(out, "clock").expect("a clock line");
    assert_eq!(level, "skip", "{r:?}");
    assert!(clock.contains("Date"), "{r:?}");
    assert!(
        out.contains("lock = \"auto\" uses: ofd ("),
        "auto's choice and why: {r:?}"
    );
    // The lock file is free again afterwards: a forced refresh does not wait for it.
    env.run(&["refresh", "--force"]).expect_code(0);
}

#[test]
fn doctor_json_has_checks_and_auto_lock_method() {
    let env = TestEnv::new();
    env.login();
    let (code, j) = doctor_json(&env, &["--offline"], &[]);
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["auto_lock_method"], "ofd", "{j}");
    assert!(
        j["auto_lock_reason"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let names: Vec<String> = checks(&j)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "config",
            "store",
            "filesystem",
            "lock calls",
            "lock coherence"
        ],
        "--offline skips the IdP and clock checks"
    );
    for c in checks(&j) {
        assert!(
            ["ok", "warn", "fail", "skip"].contains(&c["level"].as_str().unwrap()),
            "{c}"
        );
        assert!(c["detail"].is_string(), "{c}");
        assert!(c.get("advice").is_some(), "{c}");
    }
    assert_eq!(check_named(&j, "lock coherence").unwrap()["level"], "ok");
}

#[test]
fn doctor_peer_path_on_the_same_directory_is_coherent() {
    let env = TestEnv::new();
    env.login();
    let peer = env.credentials_dir().display().to_string();
    let (code, j) = doctor_json(&env, &["--offline", "--peer-path", &peer], &[]);
    assert_eq!(code, Some(0), "{j}");
    let c = check_named(&j, "lock coherence").unwrap();
    assert_eq!(c["level"], "ok", "{c}");
    assert!(c["detail"].as_str().unwrap().contains(&peer), "{c}");
}

#[test]
fn doctor_peer_path_that_does_not_exist_is_not_ok() {
    let env = TestEnv::new();
    env.login();
    let peer = env.root().join("no-such-dir").display().to_string();
    let (_, j) = doctor_json(&env, &["--offline", "--peer-path", &peer], &[]);
    let c = check_named(&j, "lock coherence").unwrap();
    assert_ne!(
        c["level"], "ok",
        "an untestable peer cannot be called coherent: {c}"
    );
    assert!(
        !env.root().join("no-such-dir").exists(),
        "doctor created the peer dir"
    );
}

/// Hold an OFD write lock on `path` (as a refreshing process does) while `f` runs.
fn with_ofd_lock<T>(path: &std::path::Path, f: impl FnOnce() -> T) -> T {
    use nix::fcntl::{FcntlArg, fcntl};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(&file, FcntlArg::F_OFD_SETLK(&fl)).expect("take an OFD lock");
    let out = f();
    drop(file);
    out
}

#[test]
fn doctor_while_the_store_lock_is_held_elsewhere() {
    let env = TestEnv::new();
    env.login();
    let (code, j) = with_ofd_lock(&env.lock_file(), || {
        let start = std::time::Instant::now();
        let out = doctor_json(&env, &["--offline"], &[]);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "doctor waited for the lock"
        );
        out
    });
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(check_named(&j, "lock calls").unwrap()["level"], "ok", "{j}");
    let c = check_named(&j, "lock coherence").unwrap();
    assert_eq!(c["level"], "skip", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("busy"), "{c}");
}

#[test]
fn doctor_shows_config_errors_as_fail_with_the_hint() {
    let env = TestEnv::new();
    write_user_toml(&env, "[defaults]\nclient_idd = \"x\"\n");
    let r = env.run(&["doctor", "--offline"]);
    r.expect_code(1);
    let (level, detail) = line(&r.stdout, "config").expect("a config line");
    assert_eq!(level, "FAIL", "{r:?}");
    assert!(detail.contains("client_idd"), "{r:?}");
    // The hint follows on an arrow line.
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains("→") && l.contains("line 2")),
        "{r:?}"
    );
    assert!(r.stdout.contains("lock = \"auto\" uses: unknown"), "{r:?}");

    let (code, j) = doctor_json(&env, &["--offline"], &[]);
    assert_eq!(code, Some(1));
    let c = check_named(&j, "config").unwrap();
    assert_eq!(c["level"], "fail");
    assert!(c["advice"].is_string(), "{c}");
    assert_eq!(j["auto_lock_method"], "unknown");
}

#[test]
fn doctor_without_an_idp_configured() {
    let env = TestEnv::new();
    let (code, j) = doctor_json(&env, &["--offline"], &[("QLAM_AUTH_BASE_URL", "")]);
    assert_eq!(code, Some(1), "{j}");
    let c = check_named(&j, "config").unwrap();
    assert_eq!(c["level"], "fail", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("auth_base_url"),
        "{c}"
    );
    assert!(
        c["advice"].as_str().unwrap().contains("QLAM_AUTH_BASE_URL"),
        "{c}"
    );
}

#[test]
fn doctor_fails_an_insecure_store_with_the_fix() {
    let env = TestEnv::new();
    env.login();
    chmod(&env.store_file(), 0o644);
    let (code, j) = doctor_json(&env, &["--offline"], &[]);
    assert_eq!(code, Some(1), "{j}");
    let c = check_named(&j, "store").unwrap();
    assert_eq!(c["level"], "fail", "{c}");
    assert!(c["advice"].as_str().unwrap().contains("chmod"), "{c}");
}

#[test]
fn doctor_before_the_first_login() {
    let env = TestEnv::new();
    let (code, j) = doctor_json(&env, &["--offline"], &[]);
    assert_eq!(code, Some(0), "{j}");
    let c = check_named(&j, "store").unwrap();
    assert_eq!(c["level"], "warn", "{c}");
    assert!(
        c["advice"].as_str().unwrap().contains("qlam-hpc login"),
        "{c}"
    );
    assert_eq!(j["auto_lock_method"], "ofd");
    assert!(
        j["auto_lock_reason"]
            .as_str()
            .unwrap()
            .contains("does not exist yet"),
        "{j}"
    );
    assert!(!env.credentials_dir().exists(), "doctor created the store");
}

#[test]
fn doctor_says_when_the_configured_lock_method_overrides_auto() {
    let env = TestEnv::new();
    env.login();
    let (code, j) = doctor_json(&env, &["--offline"], &[("QLAM_LOCK", "lease")]);
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["auto_lock_method"], "ofd");
    assert!(
        j["auto_lock_reason"]
            .as_str()
            .unwrap()
            .contains("lock = \"lease\""),
        "{j}"
    );
}

#[test]
fn doctor_with_the_idp_down_fails_the_idp_check() {
    let mut env = TestEnv::new();
    env.login();
    env.stop_idp();
    let (code, j) = doctor_json(&env, &[], &[]);
    assert_eq!(code, Some(1), "{j}");
    let c = check_named(&j, "idp").unwrap();
    assert_eq!(c["level"], "fail", "{c}");
    assert!(c["advice"].is_string(), "{c}");
    // Offline, the rest is fine.
    let (code, j) = doctor_json(&env, &["--offline"], &[]);
    assert_eq!(code, Some(0), "{j}");
    assert!(check_named(&j, "idp").is_none());
}

#[test]
fn doctor_nodes_outside_an_allocation_is_a_usage_error() {
    let env = TestEnv::new();
    let r = env.run(&["doctor", "--nodes", "--offline"]);
    r.expect_failure(2);
    assert!(r.stderr.contains("allocation"), "{r:?}");
    assert!(r.stderr.contains("salloc -N2"), "{r:?}");
    // One node is not enough either.
    let r = env.run_env(
        &["doctor", "--nodes", "--offline"],
        &[("SLURM_JOB_ID", "77"), ("SLURM_JOB_NUM_NODES", "1")],
    );
    r.expect_failure(2);
}

// ---- check ----

/// Make the stored login `age` seconds old (as if `qlam-hpc login` ran then).
fn set_login_age(env: &TestEnv, age: f64) {
    let path = env.store_file();
    let mut v = read_json(&path);
    v["extra"]["qlam_hpc"]["login_at"] = iso_utc(now_unix() - age).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

const DAY: f64 = 86_400.0;
const LIFETIME: f64 = 15.0 * DAY;
const MARGIN: f64 = 600.0;

/// Make the login end `left` seconds from now (default 15-day lifetime).
fn set_login_left(env: &TestEnv, left: f64) {
    set_login_age(env, LIFETIME - left);
}

#[track_caller]
fn check(env: &TestEnv, args: &[&str]) -> crate::support::Run {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    env.run(&all)
}

#[test]
fn check_passes_a_job_that_ends_before_the_login() {
    let env = TestEnv::new();
    env.login();
    let r = check(&env, &["--time", "1:00:00"]);
    r.expect_code(0);
    assert!(r.stdout.is_empty(), "stdout is for results only: {r:?}");
    assert!(r.stderr.contains("ok"), "{r:?}");
    // 14 days of a fresh 15-day login.
    check(&env, &["--time", "14-0"]).expect_code(0);
}

#[test]
fn check_around_the_boundary() {
    let env = TestEnv::new();
    env.login();
    // The job must end 10 minutes before the login does; a minute either side.
    let w = 2.0 * 3600.0;
    set_login_left(&env, w + MARGIN + 60.0);
    check(&env, &["--time", "2:00:00"]).expect_code(0);
    set_login_left(&env, w + MARGIN - 60.0);
    let r = check(&env, &["--time", "2:00:00"]);
    r.expect_failure(41);
    assert!(r.stderr.contains("qlam-hpc login"), "{r:?}");
    assert!(r.stderr.contains("expires"), "{r:?}");
}

#[test]
fn check_begin_shifts_the_job_end() {
    let env = TestEnv::new();
    env.login();
    set_login_left(&env, 3600.0 + MARGIN + 60.0);
    check(&env, &["--time", "60"]).expect_code(0);
    check(&env, &["--time", "60", "--begin", "2m"]).expect_failure(41);
    check(&env, &["--time", "60", "--begin", "1d"]).expect_failure(41);
    set_login_left(&env, 2.0 * DAY);
    check(&env, &["--time", "60", "--begin", "1d"]).expect_code(0);
    check(&env, &["--time", "60", "--begin", "86400"]).expect_code(0);
    check(&env, &["--time", "1-0", "--begin", "1d"]).expect_failure(41);
    let r = check(&env, &["--time", "60", "--begin", "soon"]);
    r.expect_code(2);
    assert!(r.stderr.contains("--begin"), "{r:?}");
}

#[test]
fn check_understands_slurm_time_forms() {
    let env = TestEnv::new();
    env.login();
    for (form, secs) in [
        ("30", 1800.0),
        ("30:15", 1815.0),
        ("1:00:00", 3600.0),
        ("1-0", DAY),
        ("1-2", DAY + 7200.0),
        ("1-2:30", DAY + 9000.0),
        ("1-2:30:05", DAY + 9005.0),
        ("2h", 7200.0),
        ("90m", 5400.0),
        ("45s", 45.0),
    ] {
        set_login_left(&env, secs + MARGIN + 60.0);
        let r = check(&env, &["--time", form]);
        assert_eq!(
            r.code,
            Some(0),
            "--time {form} ({secs} s) should fit: {r:?}"
        );
        set_login_left(&env, secs + MARGIN - 60.0);
        let r = check(&env, &["--time", form]);
        assert_eq!(
            r.code,
            Some(41),
            "--time {form} ({secs} s) should not fit: {r:?}"
        );
    }
}

#[test]
fn check_unlimited_and_garbage() {
    let env = TestEnv::new();
    env.login();
    for t in ["UNLIMITED", "unlimited", "INFINITE"] {
        let r = check(&env, &["--time", t]);
        r.expect_failure(41);
        assert!(r.stderr.contains("time limit"), "{r:?}");
    }
    for t in ["soon", "1:2:3:4", "1-", "-", "1-2:3:4:5", "", "12x"] {
        let r = check(&env, &["--time", t]);
        assert_eq!(r.code, Some(2), "--time {t:?}: {r:?}");
        assert!(r.stdout.is_empty());
    }
    env.run(&["check"]).expect_code(2);
}

#[test]
fn check_when_not_logged_in() {
    let env = TestEnv::new();
    let r = check(&env, &["--time", "30"]);
    r.expect_failure(41);
    assert!(r.stderr.contains("qlam-hpc login"), "{r:?}");
    assert_eq!(env.idp_calls(), 0, "check stays local");
}

#[test]
fn check_after_the_login_was_revoked() {
    let env = TestEnv::new();
    env.login();
    env.idp().revoke_all();
    env.set_remaining(-60.0);
    env.run(&["token"]).expect_failure(41);
    let r = check(&env, &["--time", "30"]);
    r.expect_failure(41);
    assert!(r.stderr.contains("qlam-hpc login"), "{r:?}");
}

#[test]
fn check_an_old_login_says_to_log_in_again() {
    let env = TestEnv::new();
    env.login();
    // Past its estimated end, with a still-valid access token.
    set_login_age(&env, 16.0 * DAY);
    let r = check(&env, &["--time", "10"]);
    r.expect_failure(41);
    assert!(r.stderr.contains("run `qlam-hpc login` now"), "{r:?}");
    // A job longer than any login: logging in again does not help; the advice says so.
    let r = check(&env, &["--time", "16-0"]);
    r.expect_failure(41);
    assert!(r.stderr.contains("shorten"), "{r:?}");
    assert!(!r.stderr.contains("run `qlam-hpc login` now"), "{r:?}");
}

#[test]
fn check_uses_the_configured_refresh_token_lifetime() {
    let env = TestEnv::new();
    env.login();
    write_user_toml(&env, "[defaults]\nrefresh_token_lifetime = \"2h\"\n");
    check(&env, &["--time", "1:45:00"]).expect_code(0);
    let r = check(&env, &["--time", "1:55:00"]);
    r.expect_failure(41);
    assert!(
        r.stderr.contains("2h"),
        "the message names the lifetime: {r:?}"
    );
    let s = env.run(&["-o", "json", "status"]).expect_code(0).json();
    let login_at = crate::support::parse_iso_utc(s["login_at"].as_str().unwrap());
    let est =
        crate::support::parse_iso_utc(s["refresh_token_expires_at_estimate"].as_str().unwrap());
    assert!((est - login_at - 7200.0).abs() < 2.0, "{s}");
    // Plain seconds too.
    write_user_toml(&env, "[defaults]\nrefresh_token_lifetime = 7200\n");
    check(&env, &["--time", "1:45:00"]).expect_code(0);
    check(&env, &["--time", "1:55:00"]).expect_failure(41);
    // A broken value is a configuration error.
    write_user_toml(&env, "[defaults]\nrefresh_token_lifetime = \"soon\"\n");
    check(&env, &["--time", "30"]).expect_code(40);
}

#[test]
fn check_without_a_recorded_login_time_warns() {
    let env = TestEnv::new();
    env.login();
    let path = env.store_file();
    let mut v = read_json(&path);
    v["extra"]["qlam_hpc"]
        .as_object_mut()
        .unwrap()
        .remove("login_at");
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let r = check(&env, &["--time", "30"]);
    r.expect_code(0);
    assert!(r.stderr.contains("warning"), "{r:?}");
}

fn m2m_env() -> (TestEnv, [(&'static str, &'static str); 3]) {
    let env = TestEnv::with_idp(qlam_test_idp::IdpConfig {
        clients: vec![qlam_test_idp::ClientSpec::confidential(
            "m2m-client",
            "m2m-secret-value",
        )],
        ..crate::support::fast_idp_config()
    });
    let vars = [
        ("QLAM_GRANT_TYPE", "client_credentials"),
        ("QLAM_CLIENT_ID", "m2m-client"),
        ("QLAM_CLIENT_SECRET", "m2m-secret-value"),
    ];
    (env, vars)
}

#[test]
fn check_passes_an_m2m_provider() {
    let (env, vars) = m2m_env();
    let r = env.run_env(&["check", "--time", "30-0"], &vars);
    r.expect_code(0);
    assert!(r.stderr.contains("M2M"), "{r:?}");
    assert_eq!(env.idp_calls(), 0, "check mints nothing");
    // Also once a token was minted.
    env.run_env(&["token"], &vars).expect_code(0);
    env.run_env(&["check", "--time", "2h"], &vars)
        .expect_code(0);
}

#[test]
fn check_unlimited_with_an_m2m_provider_passes() {
    let (env, vars) = m2m_env();
    env.run_env(&["check", "--time", "UNLIMITED"], &vars)
        .expect_code(0);
}

#[test]
fn check_rejects_a_malformed_time_for_an_m2m_provider_too() {
    // A typo in a submit filter's --time must not pass silently, whatever the provider.
    let (env, vars) = m2m_env();
    let r = env.run_env(&["check", "--time", "soon"], &vars);
    assert_eq!(r.code, Some(2), "{r:?}");
    let r = env.run_env(&["check", "--time", "30", "--begin", "later"], &vars);
    assert_eq!(r.code, Some(2), "{r:?}");
}

// ---- completions and man ----

const SUBCOMMANDS: &[&str] = &[
    "login",
    "logout",
    "status",
    "token",
    "env",
    "exec",
    "refresh",
    "doctor",
    "check",
    "completions",
    "man",
    "hook",
    "demo",
];

#[test]
fn completions_for_each_shell() {
    let env = TestEnv::new();
    for (shell, marker) in [
        ("bash", "complete -F _qlam__hpc"),
        ("zsh", "#compdef qlam-hpc"),
        ("fish", "complete -c qlam-hpc"),
        ("elvish", "qlam-hpc"),
        ("powershell", "qlam-hpc"),
    ] {
        let r = env.run(&["completions", shell]);
        r.expect_code(0);
        assert!(r.stdout.contains(marker), "{shell}: no {marker:?}");
        for sub in SUBCOMMANDS {
            assert!(r.stdout.contains(sub), "{shell} completion lacks {sub}");
        }
        // Options of subcommands are offered too.
        for opt in ["revoke", "peer-path", "begin", "no-browser"] {
            // fish spells them `-l revoke`, the others `--revoke`.
            let spelled = if shell == "fish" {
                format!("-l {opt}")
            } else {
                format!("--{opt}")
            };
            assert!(
                r.stdout.contains(&spelled),
                "{shell} completion lacks {opt}"
            );
        }
        assert!(r.stderr.is_empty(), "{shell}: {r:?}");
    }
    env.run(&["completions", "tcsh-ish"]).expect_code(2);
    env.run(&["completions"]).expect_code(2);
}

#[test]
fn bash_completion_is_valid_bash() {
    let env = TestEnv::new();
    let r = env.run(&["completions", "bash"]);
    r.expect_code(0);
    let script = env.root().join("qlam-hpc.bash");
    std::fs::write(&script, &r.stdout).unwrap();
    let Ok(out) = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
    else {
        return; // no bash here
    };
    assert!(
        out.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Sourcing it registers the completion function.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p qlam-hpc",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("qlam-hpc"));
}

#[test]
fn completions_do_not_offer_internal_options() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish"] {
        let r = env.run(&["completions", shell]);
        for internal in [
            "--lock-probe",
            "--node-lock-test",
            "stage-as-user",
            "renew-as-user",
        ] {
            assert!(
                !r.stdout.contains(internal),
                "{shell} completion offers the internal {internal}"
            );
        }
    }
}

#[test]
fn man_page_is_roff() {
    let env = TestEnv::new();
    let r = env.run(&["man"]);
    r.expect_code(0);
    let out = r.stdout.as_str();
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(".TH") || first.starts_with(".ie \\n(.g"),
        "not roff: {first:?}"
    );
    assert!(out.contains("\n.TH ") || out.starts_with(".TH "), "no .TH");
    assert!(out.contains("qlam\\-hpc"), "no escaped program name");
    assert!(out.contains(".SH NAME"));
    assert!(out.contains(".SH SYNOPSIS"));
    for sub in ["login", "doctor", "check", "completions"] {
        assert!(out.contains(sub), "the man page does not list {sub}");
    }
    assert!(r.stderr.is_empty(), "{r:?}");
    // groff renders it without warnings (when installed).
    let page = env.root().join("qlam-hpc.1");
    std::fs::write(&page, out).unwrap();
    if let Ok(o) = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page)
        .output()
    {
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "groff: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn man_page_documents_subcommand_options() {
    let env = TestEnv::new();
    let r = env.run(&["man"]);
    r.expect_code(0);
    for opt in [
        "\\-\\-revoke",
        "\\-\\-peer\\-path",
        "\\-\\-begin",
        "\\-\\-no\\-browser",
    ] {
        assert!(
            r.stdout.contains(opt),
            "the man page does not document {opt}"
        );
    }
}
