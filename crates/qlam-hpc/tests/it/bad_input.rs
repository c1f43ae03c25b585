//! Bad input, each with its exit code (DESIGN §8) and a stderr that says what happened and
//! what to do next; stderr is snapshotted with the temp dir and IdP port filtered out.

use serde_json::json;

use crate::support::{TestEnv, chmod, snapshot_failure};

fn write(path: &std::path::Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A qsh config with one context `lab` holding OAuth provider `alt` for this test's IdP.
fn qsh_config(env: &TestEnv) -> serde_json::Value {
    json!({
        "current_context": "lab",
        "contexts": [{
            "name": "lab",
            "defaults": { "auth_provider": "alt" },
            "auth_providers": [{
                "name": "alt",
                "provider": "oauth",
                "auth_base_url": env.base_url(),
                "client_id": qlam_test_idp::DEFAULT_CLIENT_ID,
                "grant_type": "device_code"
            }]
        }, {
            "name": "prod",
            "auth_providers": []
        }]
    })
}

/// Run `args` with only the files as configuration (no QLAM_* provider variables).
fn run_files_only(env: &TestEnv, args: &[&str]) -> crate::support::Run {
    env.run_env(
        args,
        &[
            ("QLAM_AUTH_BASE_URL", ""),
            ("QLAM_CLIENT_ID", ""),
            ("QLAM_GRANT_TYPE", ""),
        ],
    )
}

#[test]
fn not_logged_in() {
    let env = TestEnv::new();
    for args in [
        &["token"][..],
        &["env"],
        &["refresh"],
        &["refresh", "--force"],
        &["exec", "--", "true"],
    ] {
        let r = env.run(args);
        r.expect_failure(41);
        assert!(r.stderr.contains("qlam-hpc login"), "{r:?}");
    }
    snapshot_failure("not_logged_in", &env, &env.run(&["token"]));
    // -q silences progress, not errors.
    env.run(&["-q", "token"]).expect_failure(41);
    assert_eq!(env.idp_calls(), 0);
    assert!(
        !env.store_file().exists(),
        "nothing is created by a failed token"
    );
}

#[test]
fn corrupt_store_file_is_exit_60_and_left_alone() {
    let env = TestEnv::new();
    env.login();
    std::fs::write(env.store_file(), b"{\"version\": 1, garbage").unwrap();
    for args in [
        &["token"][..],
        &["status"],
        &["refresh", "--force"],
        &["env"],
    ] {
        let r = env.run(args);
        r.expect_failure(60);
        assert!(r.stderr.contains("corrupt"), "{r:?}");
    }
    assert_eq!(
        std::fs::read(env.store_file()).unwrap(),
        b"{\"version\": 1, garbage",
        "the broken file must be kept"
    );
    snapshot_failure("corrupt_store", &env, &env.run(&["token"]));

    // Valid JSON that is not QLAM Core's format is corrupt too.
    std::fs::write(env.store_file(), b"{\"version\": 1}").unwrap();
    env.run(&["token"]).expect_failure(60);
    std::fs::write(env.store_file(), b"[]").unwrap();
    env.run(&["token"]).expect_failure(60);
}

#[test]
fn world_readable_store_file_is_refused_with_the_chmod_that_fixes_it() {
    let env = TestEnv::new();
    env.login();
    chmod(&env.store_file(), 0o644);
    let before = env.idp_calls();
    let r = env.run(&["token"]);
    r.expect_failure(60);
    let fix = format!("chmod 600 {}", env.store_file().display());
    assert!(r.stderr.contains(&fix), "hint must say `{fix}`: {r:?}");
    assert_eq!(env.idp_calls(), before);
    snapshot_failure("store_world_readable", &env, &r);
    env.run(&["status"]).expect_failure(60);

    chmod(&env.store_file(), 0o640);
    env.run(&["token"]).expect_failure(60);
    // Following the hint fixes it.
    chmod(&env.store_file(), 0o600);
    env.run(&["token"]).expect_code(0);
}

#[test]
fn group_writable_credentials_dir_is_refused() {
    let env = TestEnv::new();
    env.login();
    chmod(&env.credentials_dir(), 0o770);
    let r = env.run(&["token"]);
    r.expect_failure(60);
    let fix = format!("chmod 700 {}", env.credentials_dir().display());
    assert!(r.stderr.contains(&fix), "hint must say `{fix}`: {r:?}");
    snapshot_failure("credentials_dir_group_writable", &env, &r);
    chmod(&env.credentials_dir(), 0o705);
    env.run(&["token"]).expect_failure(60);
    chmod(&env.credentials_dir(), 0o700);
    env.run(&["token"]).expect_code(0);
}

#[test]
fn store_owned_by_someone_else_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return; // needs chown
    }
    let env = TestEnv::new();
    env.login();
    std::os::unix::fs::chown(env.store_file(), Some(65534), None).unwrap();
    let r = env.run(&["token"]);
    r.expect_failure(60);
    assert!(r.stderr.contains("owned by uid 65534"), "{r:?}");
}

#[test]
fn qsh_config_that_is_not_json() {
    let env = TestEnv::new();
    write(&env.qsh_config(), "{ \"contexts\": [ oops");
    for args in [
        &["token"][..],
        &["status"],
        &["login", "--device", "--no-qr"],
    ] {
        let r = env.run(args);
        r.expect_failure(40);
        assert!(
            r.stderr.contains(&env.qsh_config().display().to_string()),
            "names the file: {r:?}"
        );
    }
    snapshot_failure("qsh_config_not_json", &env, &env.run(&["token"]));
    assert_eq!(env.idp_calls(), 0);
}

#[test]
fn qsh_config_with_an_unknown_provider_key() {
    let env = TestEnv::new();
    let mut cfg = qsh_config(&env);
    cfg["contexts"][0]["auth_providers"][0]["colour"] = json!("red");
    write(&env.qsh_config(), &cfg.to_string());
    let r = run_files_only(&env, &["token"]);
    r.expect_failure(40);
    assert!(r.stderr.contains("colour"), "names the key: {r:?}");
    assert!(
        r.stderr.contains(&env.qsh_config().display().to_string()),
        "names the file: {r:?}"
    );
    snapshot_failure("qsh_config_unknown_key", &env, &r);
    // The environment cannot paper over a broken file.
    env.run(&["token"]).expect_failure(40);
}

#[test]
fn user_toml_with_an_unknown_key() {
    let env = TestEnv::new();
    write(
        &env.user_config(),
        "[defaults]\nmin_ttl = \"10m\"\nclient_idd = \"x\"\n",
    );
    let r = env.run(&["token"]);
    r.expect_failure(40);
    assert!(r.stderr.contains("client_idd"), "names the key: {r:?}");
    assert!(
        r.stderr.contains(&env.user_config().display().to_string()),
        "names the file: {r:?}"
    );
    assert!(r.stderr.contains("line 3"), "points at the line: {r:?}");
    snapshot_failure("user_toml_unknown_key", &env, &r);

    write(&env.user_config(), "[store]\nlocks = \"ofd\"\n");
    let r = env.run(&["status"]);
    r.expect_failure(40);
    assert!(r.stderr.contains("locks"), "{r:?}");

    write(&env.user_config(), "[defaults\n");
    env.run(&["status"]).expect_failure(40);

    // QLAM_HPC_CONFIG names another user file.
    let other = env.root().join("elsewhere.toml");
    write(&other, "[defaults]\nwhatever = 1\n");
    let r = env.run_env(&["status"], &[("QLAM_HPC_CONFIG", other.to_str().unwrap())]);
    r.expect_failure(40);
    assert!(
        r.stderr.contains("elsewhere.toml") && r.stderr.contains("whatever"),
        "{r:?}"
    );

    // [hooks] belongs in the site file only.
    write(&env.user_config(), "[hooks]\nenforce = true\n");
    let r = env.run(&["status"]);
    r.expect_code(40);
    assert!(r.stderr.contains("site"), "{r:?}");
}

#[test]
fn site_toml_with_an_unknown_key() {
    let env = TestEnv::new();
    write(
        &env.site_config(),
        "[hooks]\nenforce = true\nstage = \"/run\"\n",
    );
    let r = env.run(&["status"]);
    r.expect_failure(40);
    assert!(r.stderr.contains("stage"), "{r:?}");
    assert!(
        r.stderr.contains(&env.site_config().display().to_string()),
        "{r:?}"
    );
}

#[test]
fn unknown_context_lists_the_known_ones() {
    let env = TestEnv::new();
    write(&env.qsh_config(), &qsh_config(&env).to_string());
    let r = env.run(&["--context", "nope", "token"]);
    r.expect_failure(40);
    assert!(r.stderr.contains("\"nope\""), "{r:?}");
    assert!(
        r.stderr.contains("lab, prod"),
        "lists the known contexts: {r:?}"
    );
    snapshot_failure("unknown_context", &env, &r);
    let r = env.run_env(&["status"], &[("QLAM_CONTEXT", "nope")]);
    r.expect_failure(40);
}

#[test]
fn unknown_provider() {
    let env = TestEnv::new();
    write(&env.qsh_config(), &qsh_config(&env).to_string());
    let r = run_files_only(&env, &["--provider", "nope", "token"]);
    r.expect_failure(40);
    assert!(r.stderr.contains("\"nope\""), "{r:?}");
    assert!(r.stderr.contains("alt"), "lists the known providers: {r:?}");
    snapshot_failure("unknown_provider", &env, &r);
    run_files_only(&env, &["token"]).expect_failure(41); // the known one works (and is not logged in)
}

#[test]
fn no_configuration_at_all() {
    let env = TestEnv::new();
    for args in [&["token"][..], &["status"], &["login", "--device"]] {
        let r = run_files_only(&env, args);
        r.expect_failure(40);
        assert!(r.stderr.contains("auth_base_url"), "{r:?}");
        assert!(
            r.stderr.contains("QLAM_AUTH_BASE_URL"),
            "says how to set it: {r:?}"
        );
    }
    snapshot_failure("no_configuration", &env, &run_files_only(&env, &["token"]));
    // A base URL without a client id is not enough either.
    let r = env.run_env(&["token"], &[("QLAM_CLIENT_ID", "")]);
    r.expect_failure(40);
    assert!(r.stderr.contains("QLAM_CLIENT_ID"), "{r:?}");
}

#[test]
fn invalid_values_in_the_environment_are_configuration_errors() {
    let env = TestEnv::new();
    env.login();
    for (var, value, mention) in [
        ("QLAM_LOCK", "bogus", "lock"),
        ("QLAM_LOCK_TIMEOUT", "soon", "lock_timeout"),
        ("QLAM_REFRESH_DEADLINE", "later", "refresh_deadline"),
        ("QLAM_MIN_TTL", "5x", "min_ttl"),
        ("QLAM_GRANT_TYPE", "password", "grant_type"),
        ("QLAM_AUTH_BASE_URL", "ftp://idp.example", "auth_base_url"),
        ("QLAM_AUTH_BASE_URL", "not a url", "auth_base_url"),
        ("QLAM_M2M_MONTHLY_BUDGET", "lots", "QLAM_M2M_MONTHLY_BUDGET"),
    ] {
        let r = env.run_env(&["token"], &[(var, value)]);
        r.expect_code(40);
        assert!(r.stdout.is_empty(), "{var}: {r:?}");
        assert!(r.stderr.contains(mention), "{var}={value}: {r:?}");
        assert!(
            r.stderr.contains(value),
            "{var}={value}: the message quotes the value: {r:?}"
        );
    }
}
