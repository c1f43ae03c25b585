//! Machine-to-machine (client credentials) through the CLI, against the in-process test IdP.
//!
//! DESIGN §1 (M2M with a secret or a private key), §3 (provider fields `client_secret` literal
//! or `env:VAR`, `client_secret_file`, `private_key_*`, `key_id`, `*_next`,
//! `token_endpoint_auth_method`, `assertion_audience`, `m2m_monthly_budget`; Auth0's
//! `audience`, `organization`, `scope`), §6 (single-flight minting, the monthly ledger beside
//! the store, the budget), §8 (exit codes 40, 60, 62), §9 (secrets, keys and client
//! assertions never in argv, stderr or the store; private_key_jwt with a fresh assertion).
//!
//! Every run goes through `support::run_command`, which fails a test when stderr holds a
//! token or a JWT (a client assertion is one); the runner here also checks stdout and stderr
//! for the client secret and the private-key material. Keys are made with the `openssl` CLI
//! in each test's temp dir at test time and are 0600.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qlam_test_idp::{
    ClientKey, ClientSpec, DEFAULT_CLIENT_ID, Endpoint, Fault, IdpConfig,
    JWT_BEARER_ASSERTION_TYPE, RequestRecord, SigningAlg,
};
use serde_json::{Value, json};

use crate::support::{
    Run, TestEnv, assert_no_secrets_in_stderr, assert_not_contains, chmod, fast_idp_config,
    iso_utc, mode, now_unix, read_json, run_command, wait_bounded,
};

/// The M2M client registered at the test IdP.
const CLIENT: &str = "m2m-batch";

// ---- keys and secrets ----

/// Formats the tests need private keys in.
#[derive(Clone, Copy, Debug)]
enum KeyKind {
    /// EC P-256, PKCS#8 (`BEGIN PRIVATE KEY`).
    EcPkcs8,
    /// EC P-256, SEC1 (`BEGIN EC PRIVATE KEY`): not what ES256 takes.
    EcSec1,
    /// RSA 2048, PKCS#8.
    RsaPkcs8,
    /// RSA 2048, PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    RsaPkcs1,
}

/// A private key file (0600) and its public half.
struct KeyPair {
    private: PathBuf,
    private_pem: String,
    public_pem: String,
}

#[track_caller]
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (needed to make test keys)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Make a key with openssl under `dir` (named `name`), private file chmod 600.
fn make_key(dir: &Path, name: &str, kind: KeyKind) -> KeyPair {
    std::fs::create_dir_all(dir).unwrap();
    let private = dir.join(format!("{name}.pem"));
    let raw = dir.join(format!("{name}.raw.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let p = |x: &Path| x.display().to_string();
    match kind {
        KeyKind::EcPkcs8 | KeyKind::EcSec1 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &p(&raw),
        ]),
        KeyKind::RsaPkcs8 | KeyKind::RsaPkcs1 => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &p(&raw),
        ]),
    }
    match kind {
        KeyKind::EcPkcs8 | KeyKind::RsaPkcs8 => std::fs::rename(&raw, &private).unwrap(),
        KeyKind::EcSec1 => {
            openssl(&["ec", "-in", &p(&raw), "-out", &p(&private)]);
            std::fs::remove_file(&raw).unwrap();
        }
        KeyKind::RsaPkcs1 => {
            openssl(&["rsa", "-in", &p(&raw), "-traditional", "-out", &p(&private)]);
            std::fs::remove_file(&raw).unwrap();
        }
    }
    chmod(&private, 0o600);
    openssl(&["pkey", "-in", &p(&private), "-pubout", "-out", &p(&public)]);
    let private_pem = std::fs::read_to_string(&private).unwrap();
    let header = match kind {
        KeyKind::EcPkcs8 | KeyKind::RsaPkcs8 => "-----BEGIN PRIVATE KEY-----",
        KeyKind::EcSec1 => "-----BEGIN EC PRIVATE KEY-----",
        KeyKind::RsaPkcs1 => "-----BEGIN RSA PRIVATE KEY-----",
    };
    assert!(
        private_pem.starts_with(header),
        "openssl made no {kind:?} key"
    );
    KeyPair {
        private,
        private_pem,
        public_pem: std::fs::read_to_string(&public).unwrap(),
    }
}

impl KeyPair {
    fn client_key(&self, alg: SigningAlg, kid: Option<&str>) -> ClientKey {
        let k = ClientKey::new(alg, self.public_pem.clone());
        match kid {
            Some(kid) => k.with_kid(kid),
            None => k,
        }
    }

    /// Pieces of the private key that must never leak: every base64 line of the PEM.
    fn material(&self) -> Vec<String> {
        self.private_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_string)
            .collect()
    }

    fn path(&self) -> String {
        self.private.display().to_string()
    }
}

/// A fresh random client secret (hex from /dev/urandom, so no extra dependency).
fn random_secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("m2m-secret-{hex}")
}

fn write_private(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    chmod(path, 0o600);
}

// ---- the M2M world ----

/// One test's M2M world: a test IdP with the M2M client registered, the variables that make
/// qlam-hpc use it, and the values that must never leave qlam-hpc.
struct M2m {
    env: TestEnv,
    vars: Vec<(String, String)>,
    never_shown: Vec<String>,
}

fn idp_with(clients: Vec<ClientSpec>) -> TestEnv {
    let mut all = vec![ClientSpec::public(DEFAULT_CLIENT_ID)];
    all.extend(clients);
    TestEnv::with_idp(IdpConfig {
        clients: all,
        ..fast_idp_config()
    })
}

impl M2m {
    fn new(env: TestEnv) -> M2m {
        M2m {
            env,
            vars: vec![
                ("QLAM_GRANT_TYPE".into(), "client_credentials".into()),
                ("QLAM_CLIENT_ID".into(), CLIENT.into()),
            ],
            never_shown: Vec::new(),
        }
    }

    /// A confidential client with a secret, which qlam-hpc reads from a 0600 file.
    fn with_secret() -> (M2m, String) {
        let secret = random_secret();
        let env = idp_with(vec![ClientSpec::confidential(CLIENT, &secret)]);
        let mut m = M2m::new(env);
        let file = m.env.root().join("secrets").join("m2m.secret");
        write_private(&file, &format!("{secret}\n"));
        m.var("QLAM_CLIENT_SECRET_FILE", &file.display().to_string());
        m.never_shown.push(secret.clone());
        (m, secret)
    }

    /// A private_key_jwt client with one key of `kind`, registered for `alg` (and `kid`),
    /// configured through QLAM_PRIVATE_KEY_FILE / _ALG / QLAM_KEY_ID.
    fn with_key(kind: KeyKind, alg: SigningAlg, kid: Option<&str>) -> (M2m, KeyPair) {
        let dir = tempfile::tempdir().unwrap();
        let key = make_key(dir.path(), "k", kind);
        let env = idp_with(vec![ClientSpec::private_key_jwt(
            CLIENT,
            vec![key.client_key(alg, kid)],
        )]);
        // Move the key into the test's own root so it lives as long as the test.
        let keys = env.root().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let private = keys.join(format!("m2m-{}.pem", alg.name().to_ascii_lowercase()));
        std::fs::copy(&key.private, &private).unwrap();
        chmod(&private, 0o600);
        let key = KeyPair { private, ..key };
        let mut m = M2m::new(env);
        m.var("QLAM_PRIVATE_KEY_FILE", &key.path());
        m.var("QLAM_PRIVATE_KEY_ALG", alg.name());
        if let Some(kid) = kid {
            m.var("QLAM_KEY_ID", kid);
        }
        m.never_shown.extend(key.material());
        (m, key)
    }

    fn var(&mut self, k: &str, v: &str) {
        self.vars.retain(|(name, _)| name != k);
        self.vars.push((k.into(), v.into()));
    }

    fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut c = self.env.command(args);
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        for (k, v) in extra {
            if v.is_empty() {
                c.env_remove(k);
            } else {
                c.env(k, v);
            }
        }
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    /// Run with extra variables (an empty value removes one); checks the output for secrets.
    #[track_caller]
    fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let r = run_command(self.command(args, extra));
        self.assert_clean(&r);
        r
    }

    #[track_caller]
    fn assert_clean(&self, r: &Run) {
        for s in &self.never_shown {
            assert_not_contains(&r.stderr, s, "stderr");
            assert_not_contains(&r.stdout, s, "stdout");
        }
    }

    /// Nothing the store directory holds (store, ledger, lock, discovery cache) contains a
    /// secret, key material or a client assertion.
    #[track_caller]
    fn assert_store_clean(&self) {
        let dir = self.env.credentials_dir();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            for s in &self.never_shown {
                assert_not_contains(&text, s, &path.display().to_string());
            }
            assert!(
                !has_jwt(&text),
                "{} holds a JWT (a client assertion?)",
                path.display()
            );
            assert!(
                !text.contains("PRIVATE KEY"),
                "{} holds a private key",
                path.display()
            );
        }
    }

    fn idp(&self) -> &qlam_test_idp::Idp {
        self.env.idp()
    }

    /// The access token in the store.
    fn stored_token(&self) -> String {
        self.env.store()["extra"]["token_data"]["access_token"]
            .as_str()
            .expect("an access token in the store")
            .to_string()
    }

    /// Client-credentials requests the IdP has seen, in order.
    fn cc_requests(&self) -> Vec<RequestRecord> {
        self.idp()
            .requests()
            .into_iter()
            .filter(|r| r.endpoint == "token")
            .filter(|r| r.grant_type.as_deref() == Some("client_credentials"))
            .collect()
    }

    fn ledger_file(&self) -> PathBuf {
        let mut s = self.env.store_file().into_os_string();
        s.push(".m2m-ledger.json");
        PathBuf::from(s)
    }

    /// Mints counted in the ledger for the current UTC month (0 when there is no ledger).
    fn ledger_count(&self) -> u64 {
        let path = self.ledger_file();
        if !path.exists() {
            return 0;
        }
        read_json(&path)["months"][this_month()]
            .as_u64()
            .unwrap_or(0)
    }

    /// Write the user config file (`$XDG_CONFIG_HOME/qlam-hpc/config.toml`).
    fn user_config(&self, toml: &str) {
        let path = self.env.user_config();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, toml).unwrap();
    }

    /// The cached discovery document beside the store.
    fn discovery_cache(&self) -> PathBuf {
        std::fs::read_dir(self.env.credentials_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("qlam-hpc-discovery-"))
            })
            .expect("a cached discovery document beside the store")
    }
}

/// Whether `text` holds something JWT-shaped: `eyJ…` base64url, a dot, base64url, a dot.
/// (The store's `data` field is standard base64 of JSON and starts with `eyJ` too, but has
/// no dots.)
fn has_jwt(text: &str) -> bool {
    let b = text.as_bytes();
    let url64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let mut from = 0;
    while let Some(i) = text[from..].find("eyJ").map(|i| i + from) {
        let mut j = i;
        let mut dots = 0;
        while j < b.len() && (url64(b[j]) || b[j] == b'.') {
            dots += usize::from(b[j] == b'.');
            j += 1;
        }
        if dots >= 2 && j - i > 20 {
            return true;
        }
        from = i + 3;
    }
    false
}

/// `YYYY-MM` of now in UTC, computed without the product's helpers.
fn this_month() -> String {
    iso_utc(now_unix())[..7].to_string()
}

#[track_caller]
fn one_line(r: &Run) -> String {
    assert_eq!(r.stdout.lines().count(), 1, "{r:?}");
    assert!(r.stdout.ends_with('\n'), "{r:?}");
    r.stdout.trim_end().to_string()
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

// ---- client secrets ----

/// Secret from a 0600 file, method unset: the test IdP's discovery lists
/// `client_secret_post`, so the secret goes in the form. One mint, then the store.
#[test]
fn secret_post_from_discovery_mints_once_then_serves_the_store() {
    let (m, _secret) = M2m::with_secret();
    let r = m.run(&["token"]);
    r.expect_code(0);
    assert_eq!(r.stderr, "", "{r:?}");
    let tok = one_line(&r);
    assert_eq!(tok, m.stored_token());
    assert!(m.idp().introspect(&tok), "the IdP calls the token active");

    let reqs = m.cc_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].auth_method, "post");
    assert_eq!(reqs[0].status, Some(200));
    assert_eq!(
        reqs[0].values.get("client_id").map(String::as_str),
        Some(CLIENT)
    );
    for absent in ["scope", "audience", "organization", "client_assertion"] {
        assert!(
            !reqs[0].params.iter().any(|p| p == absent),
            "{absent} sent though not configured: {:?}",
            reqs[0].params
        );
    }

    // The store: QLAM Core's format, no refresh token, the grant recorded; 0600.
    let store = m.env.store();
    assert!(store["extra"]["token_data"]["refresh_token"].is_null());
    assert_eq!(
        store["extra"]["qlam_hpc"]["grant_type"], "client_credentials",
        "{}",
        store["extra"]["qlam_hpc"]
    );
    assert_eq!(mode(&m.env.store_file()), 0o600);
    assert_eq!(m.ledger_count(), 1);
    assert_eq!(mode(&m.ledger_file()), 0o600);

    // Later calls: the stored token, no IdP request at all.
    let before = m.idp().counters();
    for _ in 0..3 {
        let r = m.run(&["token"]);
        r.expect_code(0);
        assert_eq!(one_line(&r), tok);
    }
    let after = m.idp().counters();
    assert_eq!(after.token_requests, before.token_requests);
    assert_eq!(after.discovery, before.discovery);
    assert_eq!(m.ledger_count(), 1);
    m.assert_store_clean();
}

/// QLAM Shell's own `config.json` can define the M2M provider, with its `client_secret` as
/// `env:VAR` (QLAM Core's convention); qlam-hpc mints with it and never rewrites the file.
#[test]
fn qsh_config_defines_the_m2m_provider() {
    let (m, secret) = M2m::with_secret();
    let cfg = json!({
        "current_context": "default",
        "contexts": [{
            "name": "default",
            "qpu": "default",
            "defaults": { "auth_provider": "qlam" },
            "auth_providers": [{
                "name": "qlam",
                "provider": "oauth",
                "auth_base_url": m.env.base_url(),
                "client_id": CLIENT,
                "client_secret": "env:BATCH_M2M_SECRET",
                "grant_type": "client_credentials"
            }]
        }]
    });
    write_private(&m.env.qsh_config(), &cfg.to_string());
    let original = std::fs::read(m.env.qsh_config()).unwrap();
    let r = m.run_with(
        &["token"],
        &[
            ("QLAM_AUTH_BASE_URL", ""),
            ("QLAM_CLIENT_ID", ""),
            ("QLAM_GRANT_TYPE", ""),
            ("QLAM_CLIENT_SECRET_FILE", ""),
            ("BATCH_M2M_SECRET", &secret),
        ],
    );
    r.expect_code(0);
    assert!(m.idp().introspect(&one_line(&r)));
    assert_eq!(m.cc_requests()[0].auth_method, "post");
    assert_eq!(std::fs::read(m.env.qsh_config()).unwrap(), original);
    m.assert_store_clean();
}

/// `client_secret` literal, `env:VAR` (environment and TOML) and `client_secret_file` (TOML)
/// all authenticate; `env:VAR` naming an unset variable is a config error that says so.
#[test]
fn every_secret_source_mints() {
    let (mut m, secret) = M2m::with_secret();
    let file = m.env.root().join("secrets").join("m2m.secret");
    m.vars.retain(|(k, _)| k != "QLAM_CLIENT_SECRET_FILE");
    let no_file = ("QLAM_CLIENT_SECRET_FILE", "");
    let secret = secret.as_str();

    /// What is configured, the variables set, the user TOML.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<String>);
    let cases: Vec<Case<'_>> = vec![
        (
            "literal in QLAM_CLIENT_SECRET",
            vec![("QLAM_CLIENT_SECRET", secret)],
            None,
        ),
        (
            "env:VAR in QLAM_CLIENT_SECRET",
            vec![
                ("QLAM_CLIENT_SECRET", "env:BATCH_M2M_SECRET"),
                ("BATCH_M2M_SECRET", secret),
            ],
            None,
        ),
        (
            "env:VAR in the user TOML",
            vec![("BATCH_M2M_SECRET", secret)],
            Some("[providers.qlam]\nclient_secret = \"env:BATCH_M2M_SECRET\"\n".into()),
        ),
        (
            "client_secret_file in the user TOML",
            vec![],
            Some(format!(
                "[providers.qlam]\nclient_secret_file = {}\n",
                toml_str(&file)
            )),
        ),
    ];
    let mut minted = 0;
    for (what, vars, toml) in cases {
        m.user_config(toml.as_deref().unwrap_or(""));
        let mut all = vars.clone();
        all.push(no_file);
        let r = m.run_with(&["refresh", "--force"], &all);
        assert_eq!(r.code, Some(0), "{what}: {r:?}");
        minted += 1;
        assert_eq!(m.idp().counters().client_credentials_ok, minted, "{what}");
        assert_eq!(
            m.cc_requests().last().unwrap().auth_method,
            "post",
            "{what}"
        );
    }
    assert_eq!(m.ledger_count(), minted);

    m.user_config("");
    let r = m.run_with(
        &["refresh", "--force"],
        &[("QLAM_CLIENT_SECRET", "env:NOT_SET_ANYWHERE"), no_file],
    );
    r.expect_failure(40);
    assert!(r.stderr.contains("NOT_SET_ANYWHERE"), "{r:?}");
    assert_eq!(m.idp().counters().client_credentials_requests, minted);
    m.assert_store_clean();
}

/// `token_endpoint_auth_method = "client_secret_basic"` sends the secret in an HTTP Basic
/// header, whether set in the environment or in a config file.
#[test]
fn secret_basic_when_configured() {
    let (m, _secret) = M2m::with_secret();
    let r = m.run_with(
        &["token"],
        &[("QLAM_TOKEN_ENDPOINT_AUTH_METHOD", "client_secret_basic")],
    );
    r.expect_code(0);
    assert_eq!(
        m.cc_requests().last().unwrap().auth_method,
        "basic",
        "from the environment"
    );

    m.user_config("[providers.qlam]\ntoken_endpoint_auth_method = \"client_secret_basic\"\n");
    m.run(&["refresh", "--force"]).expect_code(0);
    assert_eq!(
        m.cc_requests().last().unwrap().auth_method,
        "basic",
        "from the TOML file"
    );
    assert_eq!(m.cc_requests().len(), 2);
}

/// An explicit `client_secret_post` is honoured over a discovery document that offers only
/// `client_secret_basic`.
#[test]
fn explicit_secret_post_beats_discovery() {
    let (m, _secret) = M2m::with_secret();
    m.run(&["token"]).expect_code(0);
    set_cached_auth_methods(&m, json!(["client_secret_basic"]));
    m.run_with(
        &["refresh", "--force"],
        &[("QLAM_TOKEN_ENDPOINT_AUTH_METHOD", "client_secret_post")],
    )
    .expect_code(0);
    assert_eq!(m.cc_requests().last().unwrap().auth_method, "post");
}

/// Rewrite `token_endpoint_auth_methods_supported` in the discovery document qlam-hpc cached
/// beside the store (the test IdP always lists every method).
fn set_cached_auth_methods(m: &M2m, methods: Value) {
    let path = m.discovery_cache();
    let mut doc = read_json(&path);
    doc["discovery"]["token_endpoint_auth_methods_supported"] = methods;
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

/// With the method unset, discovery decides: `client_secret_post` when offered, else
/// `client_secret_basic` (also when the IdP lists nothing: RFC 8414's default).
#[test]
fn secret_method_from_discovery() {
    let (m, _secret) = M2m::with_secret();
    m.run(&["token"]).expect_code(0);
    assert_eq!(m.cc_requests()[0].auth_method, "post");

    for (methods, want) in [
        (json!(["client_secret_basic", "private_key_jwt"]), "basic"),
        (json!([]), "basic"),
        (json!(["client_secret_basic", "client_secret_post"]), "post"),
    ] {
        set_cached_auth_methods(&m, methods.clone());
        m.run(&["refresh", "--force"]).expect_code(0);
        let last = m.cc_requests().last().unwrap().clone();
        assert_eq!(last.auth_method, want, "discovery lists {methods}");
        assert_eq!(last.status, Some(200));
    }
    assert_eq!(m.ledger_count(), 4);
    m.assert_store_clean();
}

/// A wrong secret: exit 40 (invalid_client is a configuration problem) with a hint, neither
/// secret shown, nothing stored, and the reservation in the ledger given back.
#[test]
fn wrong_secret_is_a_config_error_and_costs_no_budget() {
    let (mut m, _secret) = M2m::with_secret();
    let wrong = random_secret();
    let file = m.env.root().join("secrets").join("wrong.secret");
    write_private(&file, &wrong);
    m.var("QLAM_CLIENT_SECRET_FILE", &file.display().to_string());
    m.never_shown.push(wrong);
    for args in [
        &["token"][..],
        &["-vv", "token"],
        &["-vv", "refresh", "--force"],
    ] {
        let r = m.run_with(args, &[("QLAM_M2M_MONTHLY_BUDGET", "10")]);
        r.expect_failure(40);
        assert!(r.stderr.contains("invalid_client"), "{r:?}");
    }
    assert_eq!(m.idp().counters().client_credentials_ok, 0);
    assert_eq!(m.ledger_count(), 0, "failed mints are not counted");
    assert!(!m.env.store_file().exists(), "no store without a token");
    m.assert_store_clean();
}

// ---- private_key_jwt ----

/// One private_key_jwt mint with a key of `kind` signed as `alg`: the IdP verified one
/// assertion (no rejection), no secret was sent, and the token is active.
fn mint_with_key(kind: KeyKind, alg: SigningAlg, kid: Option<&str>) {
    let (m, _key) = M2m::with_key(kind, alg, kid);
    let r = m.run(&["-vv", "token"]);
    r.expect_code(0);
    let tok = one_line(&r);
    assert!(
        m.idp().introspect(&tok),
        "{alg}: the IdP calls the token active"
    );
    let c = m.idp().counters();
    assert_eq!(c.client_credentials_ok, 1, "{alg}");
    assert_eq!(c.client_assertions, 1, "{alg}: one assertion");
    assert_eq!(c.client_assertions_rejected, 0, "{alg}");
    let reqs = m.cc_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].auth_method, "private_key_jwt");
    assert_eq!(
        reqs[0]
            .values
            .get("client_assertion_type")
            .map(String::as_str),
        Some(JWT_BEARER_ASSERTION_TYPE)
    );
    assert!(!reqs[0].params.iter().any(|p| p == "client_secret"));
    assert_eq!(m.ledger_count(), 1);
    // Served from the store afterwards: no new assertion.
    m.run(&["token"]).expect_code(0);
    assert_eq!(m.idp().counters().client_assertions, 1);
    m.assert_store_clean();
}

#[test]
fn private_key_jwt_es256_pkcs8() {
    mint_with_key(KeyKind::EcPkcs8, SigningAlg::Es256, None);
}

#[test]
fn private_key_jwt_es256_with_key_id() {
    mint_with_key(KeyKind::EcPkcs8, SigningAlg::Es256, Some("batch-2026"));
}

#[test]
fn private_key_jwt_rs256_pkcs8() {
    mint_with_key(KeyKind::RsaPkcs8, SigningAlg::Rs256, Some("rsa-1"));
}

#[test]
fn private_key_jwt_rs256_pkcs1() {
    mint_with_key(KeyKind::RsaPkcs1, SigningAlg::Rs256, None);
}

#[test]
fn private_key_jwt_rs384_and_ps256() {
    mint_with_key(KeyKind::RsaPkcs8, SigningAlg::Rs384, None);
    mint_with_key(KeyKind::RsaPkcs1, SigningAlg::Ps256, None);
}

/// A SEC1 `EC PRIVATE KEY` for ES256: a configuration error naming the problem, with the
/// openssl command that converts it; running that command fixes it.
#[test]
fn sec1_ec_key_gives_the_openssl_conversion_hint() {
    let dir = tempfile::tempdir().unwrap();
    let sec1 = make_key(dir.path(), "sec1", KeyKind::EcSec1);
    let env = idp_with(vec![ClientSpec::private_key_jwt(
        CLIENT,
        vec![sec1.client_key(SigningAlg::Es256, None)],
    )]);
    let mut m = M2m::new(env);
    let key = m.env.root().join("m2m-ec.pem");
    std::fs::copy(&sec1.private, &key).unwrap();
    chmod(&key, 0o600);
    m.var("QLAM_PRIVATE_KEY_FILE", &key.display().to_string());
    m.var("QLAM_PRIVATE_KEY_ALG", "ES256");
    m.never_shown.extend(sec1.material());

    let r = m.run(&["-vv", "token"]);
    r.expect_failure(40);
    assert!(r.stderr.contains("SEC1"), "{r:?}");
    assert!(r.stderr.contains("PKCS#8"), "{r:?}");
    let cmd = format!(
        "openssl pkcs8 -topk8 -nocrypt -in {0} -out {0}.pk8",
        key.display()
    );
    assert!(
        r.stderr.contains(&cmd),
        "the hint gives the conversion: {r:?}"
    );
    assert_eq!(m.idp().counters().client_credentials_requests, 0);
    assert_eq!(m.ledger_count(), 0);

    // Follow the hint.
    let k = key.display().to_string();
    let pk8 = format!("{k}.pk8");
    openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", &k, "-out", &pk8]);
    chmod(Path::new(&pk8), 0o600);
    m.var("QLAM_PRIVATE_KEY_FILE", &pk8);
    let r = m.run(&["token"]);
    r.expect_code(0);
    assert!(m.idp().introspect(&one_line(&r)));
}

/// A key or secret file that others can read is refused (exit 60) with the chmod that fixes
/// it, before anything is sent.
#[test]
fn readable_key_or_secret_files_are_refused() {
    let (m, key) = M2m::with_key(KeyKind::EcPkcs8, SigningAlg::Es256, None);
    for bad in [0o640, 0o644, 0o604, 0o660] {
        chmod(&key.private, bad);
        let r = m.run(&["-vv", "token"]);
        r.expect_failure(60);
        assert!(
            r.stderr.contains(&format!("chmod 600 {}", key.path())),
            "mode {bad:o}: {r:?}"
        );
    }
    assert_eq!(m.idp().counters().client_credentials_requests, 0);
    chmod(&key.private, 0o600);
    // A 0600 key owned by someone else (only root can set that up): refused too.
    if std::os::unix::fs::chown(&key.private, Some(65534), None).is_ok() {
        let r = m.run(&["token"]);
        r.expect_failure(60);
        assert!(r.stderr.contains("owned by uid 65534"), "{r:?}");
        std::os::unix::fs::chown(&key.private, Some(0), None).unwrap();
    }
    m.run(&["token"]).expect_code(0);

    let (m, _secret) = M2m::with_secret();
    let file = m.env.root().join("secrets").join("m2m.secret");
    for bad in [0o640, 0o644, 0o604] {
        chmod(&file, bad);
        let r = m.run(&["-vv", "token"]);
        r.expect_failure(60);
        assert!(
            r.stderr.contains(&format!("chmod 600 {}", file.display())),
            "mode {bad:o}: {r:?}"
        );
    }
    assert_eq!(m.idp().counters().client_credentials_requests, 0);
    assert_eq!(m.ledger_count(), 0);
    chmod(&file, 0o600);
    m.run(&["token"]).expect_code(0);
}

/// The IdP rejects an assertion as a replay once: qlam-hpc signs a fresh one and succeeds,
/// counting one mint.
#[test]
fn rejected_assertion_replay_is_retried_with_a_fresh_assertion() {
    let (m, _key) = M2m::with_key(KeyKind::EcPkcs8, SigningAlg::Es256, Some("k1"));
    m.idp().reject_next_assertions(1);
    let r = m.run(&["-vv", "token"]);
    r.expect_code(0);
    let tok = one_line(&r);
    assert!(m.idp().introspect(&tok));
    let c = m.idp().counters();
    assert_eq!(c.client_assertions, 2, "a second, fresh assertion");
    assert_eq!(c.client_assertions_rejected, 1);
    assert_eq!(c.assertion_replays, 0, "the retry did not reuse the jti");
    assert_eq!(c.faults_injected, 1);
    assert_eq!(c.client_credentials_ok, 1);
    let reqs = m.cc_requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].fault.as_deref(), Some("reject_assertion"));
    assert_eq!(reqs[0].status, Some(401));
    assert_eq!(
        (reqs[1].fault.as_deref(), reqs[1].status),
        (None, Some(200))
    );
    assert_eq!(m.ledger_count(), 1, "one mint counted, not two");
}

/// An IdP that keeps rejecting assertions: qlam-hpc gives up after a few fresh ones (exit 40),
/// stores nothing and gives the ledger reservation back.
#[test]
fn persistent_assertion_rejection_is_bounded_and_not_counted() {
    let (m, _key) = M2m::with_key(KeyKind::RsaPkcs8, SigningAlg::Rs256, None);
    m.idp().reject_next_assertions(100);
    let r = m.run(&["token"]);
    r.expect_failure(40);
    let n = m.cc_requests().len();
    assert!((2..=6).contains(&n), "{n} attempts");
    assert_eq!(m.idp().counters().assertion_replays, 0);
    assert_eq!(m.ledger_count(), 0);
    assert!(!m.env.store_file().exists());
}

/// Key rotation: two keys configured (`private_key_file` and `private_key_file_next`), the
/// first revoked at the IdP: the mint succeeds with the second.
#[test]
fn key_rotation_uses_the_next_key_when_the_first_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = make_key(dir.path(), "k1", KeyKind::EcPkcs8);
    let k2 = make_key(dir.path(), "k2", KeyKind::RsaPkcs8);
    let env = idp_with(vec![ClientSpec::private_key_jwt(
        CLIENT,
        vec![
            k1.client_key(SigningAlg::Es256, Some("k1")),
            k2.client_key(SigningAlg::Rs256, Some("k2")),
        ],
    )]);
    let mut m = M2m::new(env);
    m.never_shown.extend(k1.material());
    m.never_shown.extend(k2.material());
    m.user_config(&format!(
        "[providers.qlam]\nprivate_key_file = {}\nprivate_key_alg = \"ES256\"\nkey_id = \"k1\"\n\
         private_key_file_next = {}\nprivate_key_alg_next = \"RS256\"\nkey_id_next = \"k2\"\n",
        toml_str(&k1.private),
        toml_str(&k2.private)
    ));
    // Both keys valid: the first one signs, one request.
    m.run(&["token"]).expect_code(0);
    assert_eq!(m.cc_requests().len(), 1);

    assert!(m.idp().revoke_client_key(CLIENT, "k1"));
    let r = m.run(&["-vv", "refresh", "--force"]);
    r.expect_code(0);
    let reqs = m.cc_requests();
    assert_eq!(reqs.len(), 3, "one rejected with k1, one accepted with k2");
    assert_eq!(reqs[1].status, Some(401));
    assert_eq!(reqs[2].status, Some(200));
    assert!(m.idp().introspect(&m.stored_token()));
    assert_eq!(m.ledger_count(), 2);
}

/// The rotation keys are at least accepted as configuration (the TOML schema knows them), and
/// with a single revoked key the mint fails with exit 40, costing no budget.
#[test]
fn revoked_only_key_fails_cleanly() {
    let (m, _key) = M2m::with_key(KeyKind::EcPkcs8, SigningAlg::Es256, Some("k1"));
    m.run(&["token"]).expect_code(0);
    assert!(m.idp().revoke_client_key(CLIENT, "k1"));
    let r = m.run(&["-vv", "refresh", "--force"]);
    r.expect_failure(40);
    assert!(r.stderr.contains("invalid_client"), "{r:?}");
    assert_eq!(m.ledger_count(), 1, "the failed mint is not counted");
    // The cached token is still served.
    let r = m.run(&["token"]);
    r.expect_code(0);
    assert_eq!(one_line(&r), m.stored_token());

    // `*_next` fields parse (an unknown key would be exit 40 before any request).
    m.user_config(&format!(
        "[providers.qlam]\nprivate_key_file_next = {}\nprivate_key_alg_next = \"ES256\"\nkey_id_next = \"k2\"\n",
        toml_str(&m.env.root().join("keys").join("m2m-es256.pem"))
    ));
    m.run(&["token"]).expect_code(0);
}

/// `assertion_audience` replaces the issuer as the assertion's `aud`: the token endpoint URL
/// is accepted (as Auth0 does), anything else is rejected by the IdP.
#[test]
fn assertion_audience_is_used() {
    let (m, _key) = M2m::with_key(KeyKind::EcPkcs8, SigningAlg::Es256, None);
    let token_endpoint = format!("{}/oauth/token", m.env.base_url());
    m.user_config(&format!(
        "[providers.qlam]\nassertion_audience = {token_endpoint:?}\n"
    ));
    m.run(&["token"]).expect_code(0);
    assert_eq!(m.idp().counters().client_assertions_rejected, 0);

    m.user_config("[providers.qlam]\nassertion_audience = \"https://elsewhere.example/\"\n");
    let r = m.run(&["refresh", "--force"]);
    r.expect_failure(40);
    assert_eq!(m.idp().counters().client_assertions_rejected, 1);
    assert_eq!(m.idp().counters().client_credentials_ok, 1);
}

// ---- Auth0 parameters ----

/// `audience`, `scope` as configured (nothing added for M2M) and `organization` when a
/// tenant is set reach the token endpoint, with a secret and with a key alike.
#[test]
fn auth0_parameters_reach_the_idp() {
    let aud = "https://api.qlam.example/";
    let scope = "read:jobs submit:jobs";
    let (m, _secret) = M2m::with_secret();
    m.run_with(
        &["token"],
        &[
            ("QLAM_AUDIENCE", aud),
            ("QLAM_SCOPE", scope),
            ("QLAM_TENANT", "org_quera_lab"),
        ],
    )
    .expect_code(0);
    let r = &m.cc_requests()[0];
    assert_eq!(r.values.get("audience").map(String::as_str), Some(aud));
    assert_eq!(r.values.get("scope").map(String::as_str), Some(scope));
    assert_eq!(
        r.values.get("organization").map(String::as_str),
        Some("org_quera_lab")
    );

    // Without a tenant: no organization; without a scope: none sent (not the user default).
    m.run_with(&["refresh", "--force"], &[("QLAM_AUDIENCE", aud)])
        .expect_code(0);
    let r = m.cc_requests()[1].clone();
    assert_eq!(r.values.get("audience").map(String::as_str), Some(aud));
    assert!(
        !r.params.iter().any(|p| p == "organization" || p == "scope"),
        "{:?}",
        r.params
    );

    // From the TOML file, with private_key_jwt.
    let (m, _key) = M2m::with_key(KeyKind::EcPkcs8, SigningAlg::Es256, None);
    m.user_config(&format!(
        "[providers.qlam]\naudience = {aud:?}\nscope = {scope:?}\ntenant = \"org_toml\"\n"
    ));
    m.run(&["token"]).expect_code(0);
    let r = &m.cc_requests()[0];
    assert_eq!(r.auth_method, "private_key_jwt");
    assert_eq!(r.values.get("audience").map(String::as_str), Some(aud));
    assert_eq!(r.values.get("scope").map(String::as_str), Some(scope));
    assert_eq!(
        r.values.get("organization").map(String::as_str),
        Some("org_toml")
    );
}

// ---- herd, ledger ----

/// Start `n` processes with `args` before waiting for any.
fn spawn_all(m: &M2m, n: usize, args: &[&str]) -> Vec<Run> {
    let start = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut c = m.command(args, &[]);
            c.env("SLURM_JOB_ID", "4242")
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
        m.assert_clean(r);
    }
    runs
}

/// 300 array tasks start with no cached token: one mint at the IdP, every task prints the
/// same token, the ledger counts one.
#[test]
fn herd_of_300_without_a_token_mints_once() {
    let (m, _secret) = M2m::with_secret();
    // A second mint would also fail at the IdP.
    m.idp().set_m2m_quota(Some(1));
    let runs = spawn_all(&m, 300, &["token"]);
    for r in &runs {
        r.expect_code(0);
        assert_eq!(r.stderr, "", "{r:?}");
    }
    let distinct: BTreeSet<&str> = runs.iter().map(|r| r.stdout.as_str()).collect();
    assert_eq!(distinct.len(), 1, "every task must get the same token");
    let tok = one_line(&runs[0]);
    assert_eq!(tok, m.stored_token());
    assert!(m.idp().introspect(&tok));
    let c = m.idp().counters();
    assert_eq!(c.client_credentials_requests, 1, "one mint for the herd");
    assert_eq!(c.client_credentials_ok, 1);
    assert_eq!(c.discovery, 1, "only the minting task discovers");
    assert_eq!(m.ledger_count(), 1);
    let ledger = read_json(&m.ledger_file());
    assert_eq!(ledger["months"].as_object().unwrap().len(), 1, "{ledger}");
    let meta = &m.env.store()["extra"]["qlam_hpc"];
    assert_eq!(meta["generation"], 1, "{meta}");
    assert!(
        meta["refreshed_by"]["job_id"]
            .as_str()
            .is_some_and(|j| j.starts_with("4242_")),
        "{meta}"
    );
    m.assert_store_clean();
}

/// The same herd with private_key_jwt and lease locks: one assertion, one mint.
#[test]
fn herd_with_private_key_and_lease_locks_mints_once() {
    let (mut m, _key) = M2m::with_key(KeyKind::EcPkcs8, SigningAlg::Es256, None);
    m.var("QLAM_LOCK", "lease");
    let runs = spawn_all(&m, 100, &["token"]);
    for r in &runs {
        r.expect_code(0);
    }
    let distinct: BTreeSet<&str> = runs.iter().map(|r| r.stdout.as_str()).collect();
    assert_eq!(distinct.len(), 1);
    let c = m.idp().counters();
    assert_eq!((c.client_credentials_requests, c.client_assertions), (1, 1));
    assert_eq!(m.ledger_count(), 1);
}

/// Concurrent writers: many forced mints at once. However many of them mint, the ledger
/// equals the IdP's count of tokens issued, and it stays valid JSON with no stray temp files.
#[test]
fn ledger_survives_concurrent_forced_mints() {
    let (m, _secret) = M2m::with_secret();
    m.run(&["token"]).expect_code(0);
    for round in 0..3 {
        let runs = spawn_all(&m, 40, &["refresh", "--force"]);
        for r in &runs {
            r.expect_code(0);
        }
        let ok = m.idp().counters().client_credentials_ok;
        assert_eq!(m.ledger_count(), ok, "round {round}: ledger vs IdP mints");
    }
    let stray: Vec<_> = std::fs::read_dir(m.env.credentials_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temp files left: {stray:?}");
    let ledger = read_json(&m.ledger_file());
    assert_eq!(ledger["months"].as_object().unwrap().len(), 1, "{ledger}");
}

/// The ledger counts per UTC month: other months do not count against the budget, a full
/// current month refuses without asking the IdP. The budget comes from the TOML file here.
#[test]
fn ledger_counts_per_utc_month() {
    let (m, _secret) = M2m::with_secret();
    m.user_config("[providers.qlam]\nm2m_monthly_budget = 2\n");
    std::fs::create_dir_all(m.env.credentials_dir()).unwrap();
    chmod(&m.env.credentials_dir(), 0o700);
    write_private(
        &m.ledger_file(),
        &json!({"months": {"2020-01": 999, "1999-12": 5}}).to_string(),
    );
    m.run(&["token"]).expect_code(0);
    let ledger = read_json(&m.ledger_file());
    assert_eq!(ledger["months"][this_month()], 1, "{ledger}");
    assert_eq!(ledger["months"]["2020-01"], 999, "{ledger}");

    write_private(
        &m.ledger_file(),
        &json!({"months": {this_month(): 2}}).to_string(),
    );
    let before = m.idp().counters().client_credentials_requests;
    let r = m.run(&["refresh", "--force"]);
    r.expect_failure(62);
    assert_eq!(m.idp().counters().client_credentials_requests, before);
}

// ---- budget ----

/// Budget 2: two mints pass (the second warns: 80 % reached), the third exits 62 without
/// asking the IdP, `token` still prints the cached token, and `status` shows the count and
/// the budget; once the cached token has expired, `token` exits 62 too.
#[test]
fn budget_of_two() {
    let (mut m, _secret) = M2m::with_secret();
    m.var("QLAM_M2M_MONTHLY_BUDGET", "2");

    let r = m.run(&["token"]);
    r.expect_code(0);
    assert!(!r.stderr.contains("budget"), "1 of 2 is below 80 %: {r:?}");
    let r = m.run(&["refresh", "--force"]);
    r.expect_code(0);
    assert!(
        r.stderr.contains("qlam-hpc: warning:") && r.stderr.contains("2 of 2"),
        "a warning at 80 %: {r:?}"
    );
    let tok = m.stored_token();
    assert_eq!(m.idp().counters().client_credentials_ok, 2);

    let r = m.run(&["refresh", "--force"]);
    r.expect_failure(62);
    assert!(r.stderr.contains("budget"), "{r:?}");
    assert!(r.stderr.contains("2 of 2"), "{r:?}");
    assert_eq!(
        m.idp().counters().client_credentials_requests,
        2,
        "the refused mint never reached the IdP"
    );

    let r = m.run(&["token"]);
    r.expect_code(0);
    assert_eq!(one_line(&r), tok, "the cached token is still served");

    let s = m.run(&["-o", "json", "status"]).expect_code(0).json();
    assert_eq!(s["m2m_mints_this_month"], 2, "{s}");
    assert_eq!(s["m2m_monthly_budget"], 2, "{s}");
    let r = m.run(&["status"]);
    r.expect_code(0);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("m2m budget"))
        .unwrap_or_else(|| panic!("no budget line: {r:?}"));
    assert!(line.contains("2 of 2"), "{line}");

    // Expired cached token, budget spent: nothing to serve.
    m.env.set_remaining(-5.0);
    let r = m.run(&["token"]);
    r.expect_failure(62);
    assert!(r.stderr.contains("budget is used up"), "{r:?}");
    assert_eq!(m.idp().counters().client_credentials_requests, 2);
    assert_eq!(m.ledger_count(), 2);
}

/// Every budget refusal says what to do next: raise `m2m_monthly_budget` or wait for the
/// next month, also when it is replayed from the failure recorded in the store.
#[test]
fn budget_refusal_hint_survives_the_failure_window() {
    let (mut m, _secret) = M2m::with_secret();
    m.var("QLAM_M2M_MONTHLY_BUDGET", "1");
    m.run(&["token"]).expect_code(0);
    let r = m.run(&["refresh", "--force"]);
    r.expect_failure(62);
    assert!(r.stderr.contains("m2m_monthly_budget"), "{r:?}");
    // Now the cached token expires and a job asks for one: same refusal, same advice.
    m.env.set_remaining(-5.0);
    let r = m.run(&["token"]);
    r.expect_failure(62);
    assert!(
        r.stderr.contains("m2m_monthly_budget"),
        "the hint says what to raise: {r:?}"
    );
    assert!(!r.stderr.contains("retry in a little while"), "{r:?}");
}

/// Budget 2 reached by expiry: the token expires between mints (no `--force`).
#[test]
fn budget_of_two_reached_by_expiry() {
    let (mut m, _secret) = M2m::with_secret();
    m.var("QLAM_M2M_MONTHLY_BUDGET", "2");
    let t1 = one_line(m.run(&["token"]).expect_code(0));
    m.env.set_remaining(-1.0);
    let r = m.run(&["token"]);
    r.expect_code(0);
    let t2 = one_line(&r);
    assert_ne!(t1, t2, "an expired token is replaced");
    assert!(r.stderr.contains("2 of 2"), "{r:?}");
    m.env.set_remaining(-1.0);
    m.run(&["token"]).expect_failure(62);
    m.run(&["env"]).expect_failure(62);
    assert_eq!(m.idp().counters().client_credentials_requests, 2);
}

/// The warning starts at 80 % of the budget: with 5, mints 4 and 5 warn, 1 to 3 do not.
#[test]
fn budget_warning_from_80_percent() {
    let (mut m, _secret) = M2m::with_secret();
    m.var("QLAM_M2M_MONTHLY_BUDGET", "5");
    for i in 1..=5u64 {
        let r = m.run(&["refresh", "--force"]);
        r.expect_code(0);
        let warned = r.stderr.contains("qlam-hpc: warning:");
        assert_eq!(warned, i >= 4, "mint {i}: {r:?}");
        if warned {
            assert!(r.stderr.contains(&format!("{i} of 5")), "{r:?}");
        }
        let s = m.run(&["-o", "json", "status"]).json();
        assert_eq!(s["m2m_mints_this_month"], i);
    }
    m.run(&["refresh", "--force"]).expect_failure(62);
    // -q silences the warning but not the refusal.
    let r = m.run(&["-q", "refresh", "--force"]);
    assert_eq!(r.code, Some(62), "{r:?}");
}

/// Without a budget, status still counts the month's mints (JSON), and the IdP's own quota
/// (429) is a server-side failure that keeps the cached token and is not counted.
#[test]
fn idp_quota_without_a_budget() {
    let (m, _secret) = M2m::with_secret();
    m.idp().set_m2m_quota(Some(1));
    let tok = one_line(m.run(&["token"]).expect_code(0));
    let s = m.run(&["-o", "json", "status"]).json();
    assert_eq!(s["m2m_mints_this_month"], 1, "{s}");
    assert!(s["m2m_monthly_budget"].is_null(), "{s}");

    let r = m.run_with(&["refresh", "--force"], &[("QLAM_REFRESH_DEADLINE", "2s")]);
    r.expect_failure(50);
    assert_eq!(m.ledger_count(), 1, "the refused mint is given back");
    let r = m.run(&["token"]);
    r.expect_code(0);
    assert_eq!(one_line(&r), tok);
}

// ---- secrets never leave ----

/// Secrets and keys are never in any process's argv while qlam-hpc mints, nor on stderr at
/// -vv on any path, nor in the store, the ledger, the lock or the discovery cache.
#[test]
fn secrets_and_keys_stay_out_of_argv_logs_and_store() {
    for use_key in [false, true] {
        let m = if use_key {
            M2m::with_key(KeyKind::RsaPkcs1, SigningAlg::Rs256, Some("k")).0
        } else {
            M2m::with_secret().0
        };
        // Slow token endpoint: qlam-hpc is mid-mint while every process's argv is read.
        m.idp().push_fault(
            Endpoint::Token,
            Fault::Latency(Duration::from_millis(1500)),
            Some(1),
        );
        let mut child = m.command(&["-vv", "token"], &[]);
        child.stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = Instant::now();
        let child = child.spawn().unwrap();
        let pid = child.id();
        let mut saw_it = false;
        while start.elapsed() < Duration::from_millis(1200) {
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let name = entry.file_name();
                let Some(name) = name
                    .to_str()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&cmdline);
                for s in &m.never_shown {
                    assert!(
                        !text.contains(s.as_str()),
                        "a secret is in the argv of pid {name}"
                    );
                }
                saw_it |= name == pid.to_string();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(saw_it, "qlam-hpc was running during the scan");
        let r = wait_bounded(child, start);
        assert_no_secrets_in_stderr(&r);
        m.assert_clean(&r);
        r.expect_code(0);

        for args in [
            &["-vv", "token"][..],
            &["-vv", "status"],
            &["-vv", "-o", "json", "status"],
            &["-vv", "env"],
            &["-vv", "refresh", "--force"],
            &["-vv", "exec", "--", "true"],
        ] {
            m.run(args).expect_code(0);
        }
        // Failures at -vv: an IdP outage, then a rejected client.
        m.idp()
            .push_fault(Endpoint::Token, Fault::Status(500), None);
        m.run_with(
            &["-vv", "refresh", "--force"],
            &[("QLAM_REFRESH_DEADLINE", "1s")],
        )
        .expect_code(50);
        m.idp().clear_faults();
        if use_key {
            assert!(m.idp().revoke_client_key(CLIENT, "k"));
        } else {
            m.idp()
                .push_fault(Endpoint::Token, Fault::Status(401), Some(1));
        }
        let r = m.run(&["-vv", "refresh", "--force"]);
        assert_ne!(r.code, Some(0), "{r:?}");
        m.assert_store_clean();
        let store = std::fs::read_to_string(m.env.store_file()).unwrap();
        assert!(!store.contains("client_secret") && !store.contains("client_assertion"));
    }
}
