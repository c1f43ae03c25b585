//! Shared fixtures: a hermetic environment per test (its own temp dir and in-process test
//! IdP), a runner that captures exit code, stdout and stderr, and checks every stderr for
//! token values, and helpers to read and age the token store.
//!
//! Nothing here prints a token: failures show output with token-shaped strings redacted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qlam_test_idp::{Counters, DEFAULT_CLIENT_ID, Idp, IdpConfig};
use serde_json::Value;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_qlam-hpc");

/// sha256hex("oauth_default_qlam"), computed independently of the product (`sha256sum`).
pub(crate) const DEFAULT_KEY_SHA256: &str =
    "53bcdd0fc06948666f51b7ad7ac445db0b7dd704d76c734950c900df645d802f";

/// Bound on any single run of the binary, so a hang fails the test instead of the suite.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// An IdP for most tests: approves device codes at once and lets the client poll every second.
pub(crate) fn fast_idp_config() -> IdpConfig {
    IdpConfig {
        auto_approve: true,
        device_interval: Some(1),
        ..IdpConfig::default()
    }
}

/// One test's world: a temp dir standing in for HOME and every config location, and an IdP.
pub(crate) struct TestEnv {
    idp: Option<Idp>,
    base_url: String,
    tmp: tempfile::TempDir,
}

impl TestEnv {
    /// A fresh environment with an auto-approving IdP (access tokens live 1 h).
    pub(crate) fn new() -> TestEnv {
        TestEnv::with_idp(fast_idp_config())
    }

    /// A fresh environment with an IdP configured as given.
    pub(crate) fn with_idp(cfg: IdpConfig) -> TestEnv {
        let idp = Idp::start(cfg).expect("start the test IdP");
        let tmp = tempfile::Builder::new()
            .prefix("qlam-hpc-it-")
            .tempdir()
            .expect("temp dir");
        TestEnv {
            base_url: idp.base_url(),
            idp: Some(idp),
            tmp,
        }
    }

    /// The test IdP.
    #[track_caller]
    pub(crate) fn idp(&self) -> &Idp {
        self.idp.as_ref().expect("the IdP was stopped")
    }

    /// Stop the IdP: its port closes, as when the IdP goes down.
    pub(crate) fn stop_idp(&mut self) {
        drop(self.idp.take());
    }

    /// The IdP's base URL (still known after [`TestEnv::stop_idp`]).
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The temp dir (HOME).
    pub(crate) fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub(crate) fn qsh_dir(&self) -> PathBuf {
        self.root().join("qsh")
    }

    pub(crate) fn qsh_config(&self) -> PathBuf {
        self.qsh_dir().join("config.json")
    }

    pub(crate) fn credentials_dir(&self) -> PathBuf {
        self.qsh_dir().join("credentials")
    }

    pub(crate) fn user_config(&self) -> PathBuf {
        self.root().join("cfg").join("qlam-hpc").join("config.toml")
    }

    pub(crate) fn site_config(&self) -> PathBuf {
        self.root().join("site.toml")
    }

    /// The store file of (context, provider), named as DESIGN §5 says.
    pub(crate) fn store_file_for(&self, key_sha256: &str, prefix: &str) -> PathBuf {
        self.credentials_dir()
            .join(format!("cache_{prefix}_{key_sha256}.json"))
    }

    /// The store file of context `default`, provider `qlam`.
    pub(crate) fn store_file(&self) -> PathBuf {
        self.store_file_for(DEFAULT_KEY_SHA256, "oauth_default_qlam")
    }

    /// The lock file beside the default store file.
    pub(crate) fn lock_file(&self) -> PathBuf {
        let mut s = self.store_file().into_os_string();
        s.push(".lock");
        PathBuf::from(s)
    }

    /// The environment every run gets: hermetic, pointing at this test's IdP.
    pub(crate) fn base_env(&self) -> Vec<(String, String)> {
        let r = self.root();
        let p = |sub: &str| r.join(sub).display().to_string();
        vec![
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            ),
            ("HOME".into(), r.display().to_string()),
            ("XDG_CONFIG_HOME".into(), p("cfg")),
            ("QSH_CONFIG_DIR".into(), p("qsh")),
            ("QLAM_HPC_SITE_CONFIG".into(), p("site.toml")),
            ("QLAM_HPC_RUNTIME_DIR".into(), p("run")),
            ("QLAM_AUTH_BASE_URL".into(), self.base_url.clone()),
            ("QLAM_CLIENT_ID".into(), DEFAULT_CLIENT_ID.into()),
            ("QLAM_GRANT_TYPE".into(), "device_code".into()),
        ]
    }

    /// A command for the binary with the hermetic environment (std, for spawning).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .envs(self.base_env())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Run the binary to completion; checks stderr (and stdout) for leaked secrets.
    pub(crate) fn run(&self, args: &[&str]) -> Run {
        run_command(self.command(args))
    }

    /// Like [`TestEnv::run`], with extra variables (an empty value removes the variable).
    pub(crate) fn run_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let mut c = self.command(args);
        for (k, v) in vars {
            if v.is_empty() {
                c.env_remove(k);
            } else {
                c.env(k, v);
            }
        }
        run_command(c)
    }

    /// Log in with the device flow (auto-approved) and check the JSON events.
    pub(crate) fn login(&self) {
        let r = self.run(&["login", "--device", "--no-qr", "-o", "json"]);
        r.expect_code(0);
        let events = r.json_lines();
        assert_eq!(
            events.first().map(|e| e["event"].clone()),
            Some("device_authorization".into()),
            "{r:?}"
        );
        assert_eq!(
            events.last().map(|e| e["event"].clone()),
            Some("logged_in".into()),
            "{r:?}"
        );
        assert!(self.store_file().is_file(), "login wrote no store file");
    }

    /// The store file as JSON.
    pub(crate) fn store(&self) -> Value {
        read_json(&self.store_file())
    }

    /// (access token, refresh token) held in the store.
    pub(crate) fn tokens(&self) -> (String, String) {
        tokens_of(&self.store())
    }

    /// `extra.qlam_hpc.generation`.
    pub(crate) fn generation(&self) -> u64 {
        self.store()["extra"]["qlam_hpc"]["generation"]
            .as_u64()
            .expect("generation in the store")
    }

    /// Rewrite the store so that its access token has `secs_left` seconds left (negative:
    /// expired that long ago), as if it had been issued earlier. The tokens stay the same.
    pub(crate) fn set_remaining(&self, secs_left: f64) {
        let path = self.store_file();
        let mut v = read_json(&path);
        let td = &mut v["extra"]["token_data"];
        let lifetime = td["expires_in"].as_f64().expect("expires_in in the store");
        let created = now_unix() + secs_left - lifetime;
        td["created_at"] = iso_utc(created).into();
        // QLAM Core's field: created_at truncated to the minute plus expires_in.
        v["expires_at"] = iso_utc((created / 60.0).floor() * 60.0 + lifetime).into();
        // Writing in place keeps the file's 0600 mode.
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).expect("rewrite store");
    }

    /// Requests the IdP has answered that cost it work: discovery, device, token, revocation.
    pub(crate) fn idp_calls(&self) -> u64 {
        calls(&self.idp().counters())
    }
}

/// Total IdP requests in a counter snapshot.
pub(crate) fn calls(c: &Counters) -> u64 {
    c.discovery + c.device_authorization + c.token_requests + c.revocations
}

/// (access token, refresh token) of a store document.
pub(crate) fn tokens_of(store: &Value) -> (String, String) {
    let td = &store["extra"]["token_data"];
    (
        td["access_token"]
            .as_str()
            .expect("access_token")
            .to_string(),
        td["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string(),
    )
}

pub(crate) fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

pub(crate) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (Python's `isoformat()`), computed
/// here rather than with the product's helpers.
pub(crate) fn iso_utc(secs: f64) -> String {
    let whole = secs.floor() as i64;
    let micros = ((secs - secs.floor()) * 1e6).round().min(999_999.0) as i64;
    let days = whole.div_euclid(86_400);
    let rem = whole.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parse what [`iso_utc`] (and the product) writes, `YYYY-MM-DDTHH:MM:SS[.f]+00:00`, to unix
/// seconds.
pub(crate) fn parse_iso_utc(s: &str) -> f64 {
    let num = |a: usize, b: usize| -> i64 {
        s[a..b].parse().unwrap_or_else(|_| panic!("bad time {s:?}"))
    };
    assert!(
        s.ends_with("+00:00") && s.as_bytes()[10] == b'T',
        "not a UTC ISO time: {s:?}"
    );
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    let secs = num(11, 13) * 3600 + num(14, 16) * 60 + num(17, 19);
    let frac: f64 = if s.as_bytes()[19] == b'.' {
        format!("0{}", &s[19..s.len() - 6]).parse().unwrap()
    } else {
        0.0
    };
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + secs) as f64 + frac
}

/// Standard base64 decoding (for the store's `data` field).
pub(crate) fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .expect("base64 character") as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

/// A free loopback port with nothing listening on it.
pub(crate) fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// Mode bits of a path.
pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

pub(crate) fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---- running the binary ----

/// What one run of the binary did.
pub(crate) struct Run {
    /// Exit code; `None` if killed by a signal.
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout (redacted) ---\n{}--- stderr (redacted) ---\n{}",
            self.code,
            self.elapsed,
            redact(&self.stdout),
            redact(&self.stderr)
        )
    }
}

impl Run {
    /// Assert the exit code (showing redacted output on failure).
    #[track_caller]
    pub(crate) fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit code: {self:?}");
        self
    }

    /// Assert a failure with `code`, nothing on stdout, and a stderr that says what happened
    /// (`qlam-hpc: error: ...`) and what to do (`hint:`).
    #[track_caller]
    pub(crate) fn expect_failure(&self, code: i32) -> &Self {
        self.expect_code(code);
        assert!(
            self.stdout.is_empty(),
            "stdout must stay empty on errors: {self:?}"
        );
        assert!(
            self.stderr.contains("qlam-hpc: error: "),
            "no error message: {self:?}"
        );
        assert!(
            self.stderr.contains("hint: "),
            "no hint saying what to do: {self:?}"
        );
        self
    }

    /// stdout's lines as JSON values.
    #[track_caller]
    pub(crate) fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {self:?}"))
            })
            .collect()
    }

    /// stdout as one JSON value.
    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        let lines = self.json_lines();
        assert_eq!(lines.len(), 1, "expected one JSON line: {self:?}");
        lines.into_iter().next().unwrap()
    }
}

/// Run `cmd` to completion (bounded), capturing its output, and check it for secrets.
#[track_caller]
pub(crate) fn run_command(mut cmd: Command) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn qlam-hpc");
    let run = wait_bounded(child, start);
    assert_no_secrets_in_stderr(&run);
    run
}

/// Wait for a spawned child (stdout/stderr piped), killing it after [`RUN_TIMEOUT`].
#[track_caller]
pub(crate) fn wait_bounded(mut child: std::process::Child, start: Instant) -> Run {
    use std::io::Read;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("qlam-hpc did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    Run {
        code: status.code(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed,
    }
}

// ---- secrets ----

/// Spans of token-shaped strings: the test IdP's `at_…`/`rt_…` (43 base64url characters after
/// the prefix) and JWTs (`eyJ….….`).
fn secret_spans(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let is_tok = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let mut spans = Vec::new();
    let mut i = 0;
    while i + 3 <= b.len() {
        let at_word_start = i == 0 || !is_tok(b[i - 1]);
        let prefixed = &b[i..i + 3] == b"at_" || &b[i..i + 3] == b"rt_" || &b[i..i + 3] == b"eyJ";
        if at_word_start && prefixed {
            let mut j = i + 3;
            while j < b.len() && (is_tok(b[j]) || (b[i] == b'e' && b[j] == b'.')) {
                j += 1;
            }
            if j - i >= 23 {
                spans.push((i, j));
                i = j;
                continue;
            }
        }
        i += 1;
    }
    spans
}

/// `s` with token-shaped strings replaced by `[REDACTED]`.
pub(crate) fn redact(s: &str) -> String {
    let mut out = String::new();
    let mut last = 0;
    for (a, b) in secret_spans(s) {
        out.push_str(&s[last..a]);
        out.push_str("[REDACTED]");
        last = b;
    }
    out.push_str(&s[last..]);
    out
}

/// Whether `s` holds anything token-shaped.
pub(crate) fn has_secret(s: &str) -> bool {
    !secret_spans(s).is_empty()
}

/// DESIGN §9: no token ever reaches stderr; no refresh or ID token ever reaches stdout.
#[track_caller]
pub(crate) fn assert_no_secrets_in_stderr(run: &Run) {
    assert!(
        !has_secret(&run.stderr),
        "stderr holds a token-shaped value: {run:?}"
    );
    let refresh_or_id = secret_spans(&run.stdout)
        .iter()
        .any(|(a, _)| !run.stdout[*a..].starts_with("at_"));
    assert!(
        !refresh_or_id,
        "stdout holds a refresh or ID token: {run:?}"
    );
}

/// Assert `text` does not contain `secret` (without printing either).
#[track_caller]
pub(crate) fn assert_not_contains(text: &str, secret: &str, what: &str) {
    assert!(!secret.is_empty());
    assert!(!text.contains(secret), "{what} contains a token value");
}

// ---- snapshots ----

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Snapshot a failed run: exit code, then stderr with the temp dir and IdP port filtered.
#[track_caller]
pub(crate) fn snapshot_failure(name: &str, env: &TestEnv, run: &Run) {
    let root = env.root().display().to_string();
    let filters = [
        (regex_escape(&root), "[TMP]".to_string()),
        (
            r"127\.0\.0\.1:[0-9]+".to_string(),
            "127.0.0.1:[PORT]".to_string(),
        ),
        // The list of accepted TOML keys grows with features; the snapshot is about the
        // message's shape, the tests check the key named.
        (
            r"(unknown field `[^`]+`), expected one of [^\n]*".to_string(),
            "$1, expected one of [...]".to_string(),
        ),
    ];
    let text = format!(
        "exit code: {}\n--- stderr ---\n{}",
        run.code.map_or("signal".into(), |c| c.to_string()),
        run.stderr
    );
    let filters: Vec<(&str, &str)> = filters
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    insta::with_settings!({ filters => filters, prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_utc_is_python_isoformat() {
        assert_eq!(iso_utc(0.0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(iso_utc(1_795_897_914.5), "2026-11-28T20:31:54.500000+00:00");
        assert_eq!(iso_utc(951_782_400.0), "2000-02-29T00:00:00.000000+00:00");
        for t in [0.0, 951_782_400.25, 1_795_897_914.5, 4_102_444_799.0] {
            assert!((parse_iso_utc(&iso_utc(t)) - t).abs() < 1e-5, "{t}");
        }
    }

    #[test]
    fn secret_scanner() {
        let at = format!("at_{}", "A".repeat(43));
        let rt = format!("rt_{}", "b-_9".repeat(11));
        assert!(has_secret(&format!("token {at} here")));
        assert!(has_secret(&rt));
        assert!(has_secret("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
        assert!(!has_secret("created_at_unix expires_at last_error format_"));
        assert!(!has_secret("at_ rt_short"));
        assert_eq!(redact(&format!("x {at} y")), "x [REDACTED] y");
    }

    #[test]
    fn base64() {
        assert_eq!(
            base64_decode("eyJ0b2tlbiI6ICJhdF94In0="),
            br#"{"token": "at_x"}"#
        );
    }
}
