//! Configuration precedence through the CLI (DESIGN §3): flags > environment > user TOML >
//! qsh config.json > site TOML; `login` writes a minimal qsh config.json only when none
//! exists, and that file is enough for every later command.

use qlam_test_idp::{DEFAULT_CLIENT_ID, Idp};
use serde_json::json;

use crate::support::{Run, TestEnv, closed_port_url, fast_idp_config, mode, read_json};

const NO_PROVIDER_ENV: [(&str, &str); 3] = [
    ("QLAM_AUTH_BASE_URL", ""),
    ("QLAM_CLIENT_ID", ""),
    ("QLAM_GRANT_TYPE", ""),
];

fn files_only(env: &TestEnv, args: &[&str]) -> Run {
    env.run_env(args, &NO_PROVIDER_ENV)
}

fn files_only_with(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut all: Vec<(&str, &str)> = NO_PROVIDER_ENV.to_vec();
    all.extend_from_slice(vars);
    env.run_env(args, &all)
}

fn provider(name: &str, url: &str) -> serde_json::Value {
    json!({
        "name": name,
        "provider": "oauth",
        "auth_base_url": url,
        "client_id": DEFAULT_CLIENT_ID,
        "grant_type": "device_code"
    })
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn login_json(env: &TestEnv, vars: &[(&str, &str)]) -> Run {
    files_only_with(env, &["login", "--device", "--no-qr", "-o", "json"], vars)
}

#[test]
fn the_qsh_config_alone_defines_the_provider() {
    let env = TestEnv::new();
    let cfg = json!({
        "current_context": "lab",
        "contexts": [{
            "name": "lab",
            "qpu": "qpu-foo",
            "defaults": { "auth_provider": "alt", "http_client": { "request_timeout_seconds": 10 } },
            "auth_providers": [
                { "name": "api-key", "provider": "api_key", "key": "not-oauth" },
                provider("alt", env.base_url())
            ]
        }]
    });
    write(&env.qsh_config(), &cfg.to_string());
    let original = std::fs::read(env.qsh_config()).unwrap();

    login_json(&env, &[]).expect_code(0);
    let store = env.store_file_for(
        "a762266532de8c44074b575d12163b3005132924d4cf6013dff05a341283d65b", // sha256("oauth_lab_alt")
        "oauth_lab_alt",
    );
    assert!(store.is_file(), "the store of context lab, provider alt");
    assert!(!env.store_file().exists());
    assert_eq!(read_json(&store)["context"], "lab");
    assert_eq!(
        std::fs::read(env.qsh_config()).unwrap(),
        original,
        "the qsh config is never rewritten"
    );

    let s = files_only(&env, &["-o", "json", "status"])
        .expect_code(0)
        .json();
    assert_eq!(
        (s["context"].as_str(), s["provider"].as_str()),
        (Some("lab"), Some("alt"))
    );
    assert_eq!(s["store_path"], store.display().to_string());
    files_only(&env, &["token"]).expect_code(0);
    files_only(&env, &["refresh", "--force"]).expect_code(0);

    // A non-OAuth provider is refused by name.
    let r = files_only(&env, &["--provider", "api-key", "token"]);
    r.expect_failure(40);
    assert!(r.stderr.contains("not an OAuth provider"), "{r:?}");
}

#[test]
fn environment_overrides_the_qsh_config() {
    let env = TestEnv::new();
    let cfg = json!({
        "current_context": "default",
        "contexts": [{ "name": "default", "defaults": { "auth_provider": "qlam" },
                       "auth_providers": [provider("qlam", &closed_port_url())] }]
    });
    write(&env.qsh_config(), &cfg.to_string());
    // The qsh file's base URL is dead; QLAM_AUTH_BASE_URL points at the IdP and wins.
    login_json(&env, &[("QLAM_AUTH_BASE_URL", env.base_url())]).expect_code(0);
    assert_eq!(env.idp().counters().device_tokens_issued, 1);
    files_only_with(
        &env,
        &["refresh", "--force"],
        &[("QLAM_AUTH_BASE_URL", env.base_url())],
    )
    .expect_code(0);
    assert_eq!(env.idp().counters().refresh_ok, 1);

    // Without the override the qsh value is used (and the dead URL is unreachable: 11).
    env.set_remaining(-30.0);
    files_only_with(&env, &["token"], &[("QLAM_REFRESH_DEADLINE", "1s")]).expect_failure(11);

    // QLAM_CLIENT_ID overrides too: the IdP does not know this client.
    let r = env.run_env(
        &["refresh", "--force"],
        &[("QLAM_CLIENT_ID", "someone-else")],
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert_eq!(env.idp().counters().refresh_ok, 1);
}

#[test]
fn context_flag_and_variable_select_the_context() {
    let env = TestEnv::new(); // IdP of context lab
    let other = Idp::start(fast_idp_config()).unwrap(); // IdP of context dev
    let cfg = json!({
        "current_context": "lab",
        "contexts": [
            { "name": "lab", "auth_providers": [provider("qlam", env.base_url())] },
            { "name": "dev", "auth_providers": [provider("qlam", &other.base_url())] }
        ]
    });
    write(&env.qsh_config(), &cfg.to_string());

    login_json(&env, &[]).expect_code(0); // current_context: lab
    assert_eq!(env.idp().counters().device_authorization, 1);
    assert_eq!(other.counters().device_authorization, 0);

    files_only(&env, &["--context", "dev", "login", "--device", "--no-qr"]).expect_code(0);
    assert_eq!(other.counters().device_authorization, 1);
    let lab = env.store_file_for(
        "598a6633cfc7d4eefc720bd962b0323ee51f7c49ec3953ae7badf331c1414c11",
        "oauth_lab_qlam",
    );
    let dev = env.store_file_for(
        "0c53bfb97533cf35c6be3100e9bfa0bdc365a3820c45f856a2ee9ef85ee85fb9",
        "oauth_dev_qlam",
    );
    assert!(lab.is_file() && dev.is_file());
    let (lab_at, _) = crate::support::tokens_of(&read_json(&lab));
    let (dev_at, _) = crate::support::tokens_of(&read_json(&dev));

    let t = files_only(&env, &["token"]);
    assert!(t.stdout.trim_end() == lab_at, "the current context's token");
    let t = files_only(&env, &["--context", "dev", "token"]);
    assert!(
        t.stdout.trim_end() == dev_at,
        "--context dev selects dev's token"
    );
    let t = files_only_with(&env, &["token"], &[("QLAM_CONTEXT", "dev")]);
    assert!(t.stdout.trim_end() == dev_at, "QLAM_CONTEXT selects too");
    let t = files_only_with(
        &env,
        &["--context", "lab", "token"],
        &[("QLAM_CONTEXT", "dev")],
    );
    assert!(t.stdout.trim_end() == lab_at, "the flag beats the variable");

    files_only(&env, &["--context", "dev", "refresh", "--force"]).expect_code(0);
    assert_eq!(
        (
            env.idp().counters().refresh_requests,
            other.counters().refresh_requests
        ),
        (0, 1)
    );
}

#[test]
fn provider_flag_and_variable_select_the_provider() {
    let env = TestEnv::new();
    let cfg = json!({
        "current_context": "default",
        "contexts": [{
            "name": "default",
            "defaults": { "auth_provider": "qlam" },
            "auth_providers": [provider("qlam", env.base_url()), provider("other", env.base_url())]
        }]
    });
    write(&env.qsh_config(), &cfg.to_string());
    files_only(&env, &["login", "--device", "--no-qr"]).expect_code(0);
    assert!(
        env.store_file().is_file(),
        "defaults.auth_provider picks qlam"
    );
    let other = env.store_file_for(
        "3340fde804f2fd9f5a4c9b23dc2fc32ab1962113c587d4d2e157f56555eeb7fe",
        "oauth_default_other",
    );
    assert!(!other.exists());
    files_only(&env, &["--provider", "other", "token"]).expect_failure(41);
    files_only_with(&env, &["login", "--no-qr"], &[("QLAM_PROVIDER", "other")]).expect_code(0);
    assert!(other.is_file());
    let s = files_only(&env, &["--provider", "other", "-o", "json", "status"]).json();
    assert_eq!(s["provider"], "other");
}

#[test]
fn login_writes_a_minimal_qsh_config_that_our_loader_accepts() {
    let env = TestEnv::new();
    assert!(!env.qsh_config().exists());
    env.login();
    let path = env.qsh_config();
    assert!(path.is_file(), "login writes config.json when none exists");
    assert_eq!(mode(&path), 0o600);
    let v = read_json(&path);
    assert_eq!(v["current_context"], "default");
    let ctx = &v["contexts"][0];
    assert_eq!(v["contexts"].as_array().unwrap().len(), 1);
    assert_eq!(ctx["name"], "default");
    assert_eq!(ctx["defaults"]["auth_provider"], "qlam");
    assert_eq!(
        ctx["auth_providers"],
        json!([{
            "name": "qlam",
            "provider": "oauth",
            "auth_base_url": env.base_url(),
            "client_id": DEFAULT_CLIENT_ID,
            "grant_type": "device_code"
        }])
    );

    // Only that file now: every command works without QLAM_* variables.
    let s = files_only(&env, &["-o", "json", "status"])
        .expect_code(0)
        .json();
    assert_eq!(
        (s["context"].as_str(), s["provider"].as_str()),
        (Some("default"), Some("qlam"))
    );
    let (at, _) = env.tokens();
    assert!(files_only(&env, &["token"]).stdout == format!("{at}\n"));
    files_only(&env, &["refresh", "--force"]).expect_code(0);
    assert_eq!(env.idp().counters().refresh_ok, 1);
}

#[test]
fn login_never_overwrites_an_existing_qsh_config() {
    let env = TestEnv::new();
    // A config without any context: the environment defines the provider.
    let text = "{\n  \"current_context\": null,\n  \"contexts\": []\n}\n";
    write(&env.qsh_config(), text);
    env.login();
    assert_eq!(std::fs::read_to_string(env.qsh_config()).unwrap(), text);
    env.run(&["token"]).expect_code(0);
}

#[test]
fn user_toml_overrides_qsh_and_site_and_the_environment_overrides_user_toml() {
    let env = TestEnv::new();
    write(
        &env.site_config(),
        &format!(
            "[defaults]\nauth_base_url = \"{}\"\nclient_id = \"{DEFAULT_CLIENT_ID}\"\nmin_ttl = \"20m\"\n",
            closed_port_url()
        ),
    );
    let cfg = json!({
        "current_context": "default",
        "contexts": [{ "name": "default", "auth_providers": [provider("qlam", &closed_port_url())] }]
    });
    write(&env.qsh_config(), &cfg.to_string());
    write(
        &env.user_config(),
        &format!(
            "[providers.qlam]\nauth_base_url = \"{}\"\nmin_ttl = \"10m\"\n",
            env.base_url()
        ),
    );
    // The user file's URL beats the qsh and site URLs; the site's client id fills the gap.
    files_only(&env, &["login", "--device", "--no-qr"]).expect_code(0);
    assert_eq!(env.idp().counters().device_tokens_issued, 1);

    // min_ttl: user (10m) beats site (20m); QLAM_MIN_TTL beats the user file; the flag beats all.
    env.set_remaining(1000.0);
    files_only(&env, &["token"]).expect_code(0);
    assert_eq!(
        env.idp().counters().refresh_requests,
        0,
        "10 min from the user file is satisfied"
    );
    files_only_with(
        &env,
        &["token", "--min-ttl", "1m"],
        &[("QLAM_MIN_TTL", "20m")],
    )
    .expect_code(0);
    assert_eq!(env.idp().counters().refresh_requests, 0);
    files_only_with(&env, &["token"], &[("QLAM_MIN_TTL", "20m")]).expect_code(0);
    assert_eq!(
        env.idp().counters().refresh_requests,
        1,
        "QLAM_MIN_TTL beats the user file"
    );

    // The environment beats the user file for provider fields too.
    env.set_remaining(-30.0);
    let r = files_only_with(
        &env,
        &["token"],
        &[
            ("QLAM_AUTH_BASE_URL", &closed_port_url()),
            ("QLAM_REFRESH_DEADLINE", "1s"),
        ],
    );
    r.expect_failure(11);
}

#[test]
fn lock_method_from_files_and_environment() {
    let env = TestEnv::new();
    env.login();
    let lock = |vars: &[(&str, &str)]| {
        env.run_env(&["-o", "json", "status"], vars).json()["lock_method"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(lock(&[]), "auto");
    write(
        &env.site_config(),
        "[store]\nlock = \"flock\"\nlock_timeout = \"30s\"\n",
    );
    assert_eq!(lock(&[]), "flock");
    write(&env.user_config(), "[store]\nlock = \"ofd\"\n");
    assert_eq!(lock(&[]), "ofd");
    assert_eq!(lock(&[("QLAM_LOCK", "lease")]), "lease");
    // Each method can take the lock for a real refresh.
    for m in ["auto", "ofd", "flock", "lease"] {
        env.run_env(&["refresh", "--force"], &[("QLAM_LOCK", m)])
            .expect_code(0);
    }
    assert_eq!(env.idp().counters().refresh_ok, 4);
}

#[test]
fn qsh_config_variable_names_the_file() {
    let env = TestEnv::new();
    let file = env.root().join("shared-qsh.json");
    let cfg = json!({
        "current_context": "lab",
        "contexts": [{ "name": "lab", "auth_providers": [provider("alt", env.base_url())] }]
    });
    write(&file, &cfg.to_string());
    let qsh = [("QSH_CONFIG", file.to_str().unwrap())];
    files_only_with(&env, &["login", "--device", "--no-qr"], &qsh).expect_code(0);
    // The only OAuth provider of the context is the default; the store stays in QSH_CONFIG_DIR.
    let store = env.store_file_for(
        "a762266532de8c44074b575d12163b3005132924d4cf6013dff05a341283d65b",
        "oauth_lab_alt",
    );
    assert!(store.is_file());
    assert!(
        !env.qsh_config().exists(),
        "an existing QSH_CONFIG file is used, none written"
    );
    files_only_with(&env, &["token"], &qsh).expect_code(0);
}
