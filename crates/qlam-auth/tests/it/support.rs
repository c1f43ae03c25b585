//! Shared helpers: a throwaway home in which every configuration path (user, site, qsh,
//! runtime) points inside one temp directory, contexts built from maps (never from the real
//! environment), logins against the in-process test IdP, and token fingerprints so that
//! assertions compare tokens without ever printing one.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qlam_auth::config::{self, HttpSettings, Overrides, Settings, Verify};
use qlam_auth::flows::TokenResponse;
use qlam_auth::http::{Failure, HttpClient};
use qlam_auth::session::Session;
use qlam_auth::store::StoreFile;
use qlam_auth::{Ctx, Result, Secret};
use qlam_test_idp::{DEFAULT_CLIENT_ID, DEVICE_GRANT_URN, Idp, IdpConfig};

/// A directory standing for one user's machine: `home/`, `xdg/qlam-hpc/config.toml`,
/// `site/config.toml`, `qsh/` (QSH_CONFIG_DIR) and `run/` (node-local locks).
pub(crate) struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub(crate) fn new(name: &str) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix(&format!("qlam-it-{name}-"))
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("home")).unwrap();
        Sandbox { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    /// `QSH_CONFIG_DIR`.
    pub(crate) fn qsh_dir(&self) -> PathBuf {
        self.path().join("qsh")
    }

    pub(crate) fn qsh_file(&self) -> PathBuf {
        self.qsh_dir().join("config.json")
    }

    pub(crate) fn credentials_dir(&self) -> PathBuf {
        self.qsh_dir().join("credentials")
    }

    /// Where the user file is found through `XDG_CONFIG_HOME`.
    pub(crate) fn user_file(&self) -> PathBuf {
        self.path().join("xdg").join("qlam-hpc").join("config.toml")
    }

    /// `QLAM_HPC_SITE_CONFIG` (always set, so `/etc/qlam-hpc` is never read).
    pub(crate) fn site_file(&self) -> PathBuf {
        self.path().join("site").join("config.toml")
    }

    pub(crate) fn write(&self, path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    pub(crate) fn write_user(&self, text: &str) {
        self.write(&self.user_file(), text);
    }

    pub(crate) fn write_site(&self, text: &str) {
        self.write(&self.site_file(), text);
    }

    pub(crate) fn write_qsh(&self, doc: &serde_json::Value) {
        self.write(
            &self.qsh_file(),
            &serde_json::to_string_pretty(doc).unwrap(),
        );
    }

    /// The environment every context of this sandbox starts from.
    pub(crate) fn base_env(&self) -> BTreeMap<String, String> {
        let p = |x: PathBuf| x.display().to_string();
        [
            ("HOME", p(self.home())),
            ("XDG_CONFIG_HOME", p(self.path().join("xdg"))),
            ("QLAM_HPC_SITE_CONFIG", p(self.site_file())),
            ("QSH_CONFIG_DIR", p(self.qsh_dir())),
            ("QLAM_HPC_RUNTIME_DIR", p(self.path().join("run"))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A context with the sandbox's environment plus `extra` (later entries win; an empty
    /// value removes a variable).
    pub(crate) fn ctx(&self, extra: &[(&str, &str)]) -> Ctx {
        let mut env = self.base_env();
        for (k, v) in extra {
            if v.is_empty() {
                env.remove(*k);
            } else {
                env.insert((*k).to_string(), (*v).to_string());
            }
        }
        Ctx::from_env_map(env)
    }

    /// `config::load` in this sandbox.
    pub(crate) fn load(&self, extra: &[(&str, &str)], overrides: &Overrides) -> Result<Settings> {
        config::load(&self.ctx(extra), overrides)
    }

    /// `config::load` with no flags; panics on error.
    pub(crate) fn settings(&self, extra: &[(&str, &str)]) -> Settings {
        self.load(extra, &Overrides::default())
            .unwrap_or_else(|e| panic!("config::load failed: {e:?}"))
    }
}

/// An in-process test IdP and a sandbox whose environment points at it.
pub(crate) struct World {
    pub(crate) sb: Sandbox,
    pub(crate) idp: Idp,
}

impl World {
    /// An auto-approving IdP with `access_ttl`-second access tokens.
    pub(crate) fn new(name: &str, access_ttl: u64) -> World {
        Self::with_idp(
            name,
            IdpConfig {
                auto_approve: true,
                access_token_ttl: access_ttl,
                device_interval: Some(1),
                ..IdpConfig::default()
            },
        )
    }

    pub(crate) fn with_idp(name: &str, cfg: IdpConfig) -> World {
        World {
            sb: Sandbox::new(name),
            idp: Idp::start(cfg).unwrap(),
        }
    }

    /// The provider variables that point at the IdP, plus a lock timeout that turns a hung
    /// lock into a test failure instead of a hang.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        vec![
            ("QLAM_AUTH_BASE_URL".into(), self.idp.base_url()),
            ("QLAM_CLIENT_ID".into(), DEFAULT_CLIENT_ID.into()),
            ("QLAM_LOCK_TIMEOUT".into(), "20s".into()),
        ]
    }

    /// A context whose clock runs `offset` seconds ahead, with `extra` on top of [`World::env`].
    pub(crate) fn ctx(&self, offset: i64, extra: &[(&str, &str)]) -> Ctx {
        let env = self.env();
        let mut all: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        let mut ctx = self.sb.ctx(&all);
        ctx.clock_offset_secs = offset;
        ctx
    }

    /// A new session (a separate object each call, as separate processes would have).
    pub(crate) fn session(&self, offset: i64) -> Session {
        self.session_with(offset, &[])
    }

    pub(crate) fn session_with(&self, offset: i64, extra: &[(&str, &str)]) -> Session {
        let ctx = self.ctx(offset, extra);
        let settings = config::load(&ctx, &Overrides::default())
            .unwrap_or_else(|e| panic!("config::load failed: {e:?}"));
        Session::new(ctx, settings)
    }

    /// Tokens of a fresh auto-approved device login, and when the token request was sent.
    pub(crate) fn tokens(&self) -> (TokenResponse, f64) {
        idp_tokens(&self.idp)
    }

    /// Log in through `Session::save_login` with fresh IdP tokens (no polling delay).
    pub(crate) fn login(&self) -> StoreFile {
        let (tokens, sent) = self.tokens();
        self.session(0)
            .save_login(&tokens, sent, "device_code")
            .unwrap_or_else(|e| panic!("save_login failed: {e:?}"))
    }
}

fn client() -> HttpClient {
    let ctx = Ctx::with_vars(Vec::<(String, String)>::new());
    let settings = HttpSettings {
        verify: Verify::Off,
        request_timeout: Duration::from_secs(20),
        follow_redirects: false,
    };
    HttpClient::new(&ctx, &settings, "http://127.0.0.1").unwrap()
}

/// A device login against an auto-approving IdP, done by hand: ask for a code, redeem it at
/// once (the first poll of a code is never `slow_down`).
pub(crate) fn idp_tokens(idp: &Idp) -> (TokenResponse, f64) {
    let http = client();
    let base = idp.base_url();
    let auth = http
        .post_form(
            &format!("{base}/oauth/device/code"),
            &[
                ("client_id", DEFAULT_CLIENT_ID),
                ("scope", "openid profile email offline_access"),
            ],
            None,
        )
        .unwrap_or_else(|f| panic!("device authorization failed: {}", f.describe()));
    let device_code = auth["device_code"].as_str().unwrap().to_string();
    let sent = now_unix();
    let v = http
        .post_form(
            &format!("{base}/oauth/token"),
            &[
                ("grant_type", DEVICE_GRANT_URN),
                ("device_code", &device_code),
                ("client_id", DEFAULT_CLIENT_ID),
            ],
            None,
        )
        .unwrap_or_else(|f| panic!("device token request failed: {}", f.describe()));
    (TokenResponse::from_json(&v).unwrap(), sent)
}

/// Revoke a refresh token's whole login at the IdP (RFC 7009).
pub(crate) fn revoke(idp: &Idp, refresh_token: &Secret) {
    let r = client().post_form(
        &format!("{}/oauth/revoke", idp.base_url()),
        &[
            ("token", refresh_token.expose()),
            ("token_type_hint", "refresh_token"),
            ("client_id", DEFAULT_CLIENT_ID),
        ],
        None,
    );
    match r {
        // RFC 7009 answers 200 with an empty body, which is no JSON object.
        Ok(_) | Err(Failure::Malformed(_)) => {}
        Err(f) => panic!("revocation failed: {}", f.describe()),
    }
    assert!(
        !idp.introspect(refresh_token.expose()),
        "the login is revoked"
    );
}

pub(crate) fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Fingerprint of the stored access token (safe to print).
pub(crate) fn access_fp(file: &StoreFile) -> String {
    file.token().expect("a token").access_token.fingerprint()
}

/// Fingerprint of the stored refresh token (safe to print).
pub(crate) fn refresh_fp(file: &StoreFile) -> String {
    file.token()
        .expect("a token")
        .refresh_token
        .as_ref()
        .expect("a refresh token")
        .fingerprint()
}

/// The file's mode bits.
pub(crate) fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Names in `dir` that look like the store's temp files (`.<name>.tmp.<pid>.<rand>`).
pub(crate) fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

/// The store file as JSON.
pub(crate) fn raw_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// `assert_eq!` for secrets: compares fingerprints, so a failure prints no token.
#[track_caller]
pub(crate) fn assert_same_secret(a: &Secret, b: &Secret) {
    assert_eq!(
        a.fingerprint(),
        b.fingerprint(),
        "secrets differ (fingerprints shown)"
    );
}
