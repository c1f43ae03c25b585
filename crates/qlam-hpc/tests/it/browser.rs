//! The browser login (authorization code + PKCE S256, DESIGN §4 and §9) and `logout --revoke`,
//! against the in-process test IdP. The test plays the browser with plain HTTP requests: it
//! reads the `authorization_request` event, follows the URL to the IdP (which auto-approves,
//! or shows its approve/deny page), and delivers the redirect the IdP answers with to
//! qlam-hpc's loopback listener. Every test picks its own free `redirect_port` (user TOML), so
//! they run in parallel.
//!
//! Authorization codes and tokens are never printed: assertion messages show the redacted
//! run output only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qlam_test_idp::{ClientSpec, IdpConfig};
use serde_json::Value;

use crate::support::{
    Run, TestEnv, assert_no_secrets_in_stderr, fast_idp_config, mode, now_unix, read_json,
};

// ---- a tiny HTTP/1.1 client (loopback, plain http) ----

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// (host, port, request target) of `http://host:port/target`.
fn split_url(url: &str) -> (String, u16, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http:// URL: {}", url.split('?').next().unwrap()));
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().expect("port")))
        .unwrap_or((authority.to_string(), 80));
    (host, port, target)
}

fn http(method: &str, url: &str, form: Option<&str>) -> std::io::Result<Resp> {
    let (host, port, target) = split_url(url);
    // The listener binds 127.0.0.1 only; `localhost` may resolve to ::1 first.
    let connect_host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host.as_str()
    };
    let mut s = TcpStream::connect((connect_host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nUser-Agent: qlam-hpc-it\r\nAccept: text/html\r\n"
    );
    if let Some(body) = form {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Stop once the announced body is complete (a server may keep the connection open).
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let end = find(&buf, b"\r\n\r\n").unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let body = String::from_utf8_lossy(buf.get(end + 4..).unwrap_or_default()).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn get(url: &str) -> Resp {
    http("GET", url, None).unwrap_or_else(|e| {
        panic!(
            "GET {} failed: {e}",
            url.split('?').next().unwrap_or_default()
        )
    })
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).expect("percent escape"));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

/// The query parameters of `url`, decoded.
fn query(url: &str) -> Vec<(String, String)> {
    url.split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or_default())
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn param(url: &str, name: &str) -> Option<String> {
    query(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

// ---- the environment ----

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn write_user_toml(env: &TestEnv, text: &str) {
    let p = env.user_config();
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
}

/// A test environment whose browser flow redirects to a port of its own.
fn browser_env(cfg: IdpConfig) -> (TestEnv, u16) {
    let env = TestEnv::with_idp(cfg);
    let port = free_port();
    write_user_toml(&env, &format!("[defaults]\nredirect_port = {port}\n"));
    (env, port)
}

fn manual_idp() -> IdpConfig {
    IdpConfig {
        auto_approve: false,
        ..fast_idp_config()
    }
}

/// A command with extra variables (an empty value removes the variable).
fn command(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut c = env.command(args);
    for (k, v) in vars {
        if v.is_empty() {
            c.env_remove(k);
        } else {
            c.env(k, v);
        }
    }
    c
}

/// A running `login`: its stdout lines arrive on a channel, so nothing here blocks forever.
/// Dropping it kills the process.
struct LoginProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    start: Instant,
}

impl LoginProc {
    fn spawn(mut cmd: Command) -> LoginProc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().expect("spawn qlam-hpc login");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        LoginProc {
            child,
            lines: rx,
            stdout: Vec::new(),
            stderr: Some(stderr),
            start,
        }
    }

    /// The next JSON line on stdout.
    #[track_caller]
    fn next_event(&mut self) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                self.stdout.push(line.clone());
                serde_json::from_str(&line).expect("a JSON line on stdout")
            }
            Err(_) => {
                let run = self.finish();
                panic!("login printed no (further) event: {run:?}");
            }
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Wait (bounded) for the exit and collect everything it printed.
    #[track_caller]
    fn finish(&mut self) -> Run {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("login did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.stdout.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        let run = Run {
            code: status.code(),
            stdout: self.stdout.iter().map(|l| format!("{l}\n")).collect(),
            stderr,
            elapsed: self.start.elapsed(),
        };
        assert_no_secrets_in_stderr(&run);
        run
    }
}

impl Drop for LoginProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `login` with `args` (plus `-o json`) and return it with its first event.
fn start_login(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> (LoginProc, Value) {
    let mut all = vec!["-o", "json", "login"];
    all.extend_from_slice(args);
    let mut p = LoginProc::spawn(command(env, &all, vars));
    let first = p.next_event();
    (p, first)
}

/// Play an auto-approving IdP: follow the authorization URL, return the redirect it answers.
#[track_caller]
fn authorize(url: &str) -> String {
    let r = get(url);
    assert!(
        matches!(r.status, 302 | 303),
        "the IdP answered {} to the authorization request: {}",
        r.status,
        r.body
    );
    r.header("location").expect("a Location header").to_string()
}

/// `http://localhost:<port>/auth/callback` with `params` (values encoded).
fn callback(port: u16, params: &[(&str, &str)]) -> String {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", pct_encode(v)))
        .collect();
    format!("http://localhost:{port}/auth/callback?{}", q.join("&"))
}

/// Complete a browser login at an auto-approving IdP and check it succeeded.
#[track_caller]
fn complete(p: &mut LoginProc, url: &str) -> Run {
    let location = authorize(url);
    let r = get(&location);
    assert_eq!(r.status, 200, "the listener refused the real callback");
    assert!(r.body.contains("Logged in"), "{}", r.body);
    let run = p.finish();
    run.expect_code(0);
    run
}

/// Listening TCP sockets on `port` from a /proc/net/tcp* table: (local address hex, state).
fn listening_on(table: &str, port: u16) -> Vec<String> {
    let text = std::fs::read_to_string(table).unwrap_or_default();
    let port_hex = format!("{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, p) = f.get(1)?.rsplit_once(':')?;
            (p == port_hex && f.get(3) == Some(&"0A")).then(|| addr.to_string())
        })
        .collect()
}

fn store_meta(env: &TestEnv) -> Value {
    env.store()["extra"]["qlam_hpc"].clone()
}

// ---- the browser login ----

#[test]
fn browser_login_end_to_end() {
    let (env, port) = browser_env(fast_idp_config());
    // A $BROWSER that records its argument: --no-browser must not start it.
    let opened = env.root().join("opened-url");
    let browser = fake_browser(env.root(), &opened);
    let (mut p, ev) = start_login(
        &env,
        &["--browser", "--no-browser"],
        &[("BROWSER", browser.to_str().unwrap())],
    );

    // The authorization_request event: {"event", "url"} and nothing else.
    assert_eq!(ev["event"], "authorization_request", "{ev}");
    let keys: Vec<&String> = ev.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["event", "url"]);
    let url = ev["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/authorize?", env.base_url())),
        "{url}"
    );
    let redirect_uri = format!("http://localhost:{port}/auth/callback");
    assert_eq!(param(&url, "response_type").as_deref(), Some("code"));
    assert_eq!(
        param(&url, "client_id").as_deref(),
        Some(qlam_test_idp::DEFAULT_CLIENT_ID)
    );
    assert_eq!(
        param(&url, "redirect_uri").as_deref(),
        Some(redirect_uri.as_str())
    );
    assert_eq!(
        param(&url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let challenge = param(&url, "code_challenge").expect("code_challenge");
    assert_eq!(challenge.len(), 43, "S256 challenge: 32 bytes, base64url");
    assert!(
        challenge
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    let state = param(&url, "state").expect("state");
    assert!(state.len() >= 22, "state must be unguessable: {state:?}");
    let scope = param(&url, "scope").expect("scope");
    assert_eq!(scope, "openid profile email offline_access");

    // The listener is bound to 127.0.0.1 only (DESIGN §9).
    let v4 = listening_on("/proc/net/tcp", port);
    assert_eq!(v4, ["0100007F"], "listening sockets on port {port}: {v4:?}");
    assert!(
        listening_on("/proc/net/tcp6", port).is_empty(),
        "listens on IPv6 too"
    );
    let other = TcpStream::connect_timeout(
        &format!("127.0.0.2:{port}").parse().unwrap(),
        Duration::from_secs(5),
    );
    assert!(other.is_err(), "the listener accepts on 127.0.0.2");

    // For people, on stderr: the URL and that we are waiting.
    let run = complete(&mut p, &url);
    assert!(run.stderr.contains(&url), "{run:?}");
    assert!(run.stderr.contains("Waiting"), "{run:?}");
    let events = run.json_lines();
    assert_eq!(events.len(), 2, "{run:?}");
    assert_eq!(events[1]["event"], "logged_in");
    let exp = events[1]["expires_at"].as_i64().expect("expires_at") as f64;
    assert!((exp - (now_unix() + 3600.0)).abs() < 120.0, "{}", events[1]);
    assert!(!opened.exists(), "--no-browser started $BROWSER");

    // What the login wrote.
    assert_eq!(mode(&env.store_file()), 0o600);
    assert_eq!(mode(&env.credentials_dir()), 0o700);
    assert!(env.lock_file().is_file());
    assert!(env.qsh_config().is_file(), "no minimal qsh config.json");
    let meta = store_meta(&env);
    assert_eq!(meta["grant_type"], "authorization_code");
    assert_eq!(meta["generation"], 1);
    assert!(meta["login_at"].is_string());
    let (at, rt) = env.tokens();
    assert!(
        env.idp().introspect(&at),
        "the stored access token is not active"
    );
    assert!(
        env.idp().introspect(&rt),
        "the stored refresh token is not active"
    );

    // One code exchange, with the verifier and the same redirect URI, no client secret.
    let c = env.idp().counters();
    assert_eq!(c.authorization_code_requests, 1, "{c:?}");
    let reqs = env.idp().requests();
    let exchange: Vec<_> = reqs
        .iter()
        .filter(|q| q.grant_type.as_deref() == Some("authorization_code"))
        .collect();
    assert_eq!(exchange.len(), 1);
    for p in ["code", "redirect_uri", "code_verifier", "client_id"] {
        assert!(
            exchange[0].params.iter().any(|x| x == p),
            "{p} missing from the token request: {:?}",
            exchange[0].params
        );
    }
    assert!(!exchange[0].params.iter().any(|x| x == "client_secret"));
    assert_eq!(exchange[0].auth_method, "none");
    assert_eq!(exchange[0].status, Some(200));

    // The stored login serves tokens without going back to the IdP.
    let before = env.idp_calls();
    let t = env.run(&["token"]);
    t.expect_code(0);
    assert!(
        t.stdout.trim() == at,
        "token does not print the stored access token"
    );
    assert_eq!(env.idp_calls(), before);
    let s = env.run(&["-o", "json", "status"]).expect_code(0).json();
    assert_eq!(s["logged_in"], true);
    assert_eq!(s["has_refresh_token"], true);
}

#[test]
fn forged_callbacks_are_refused_and_the_real_one_still_completes() {
    let (env, port) = browser_env(fast_idp_config());
    let (mut p, ev) = start_login(&env, &["--browser", "--no-browser"], &[]);
    let url = ev["url"].as_str().unwrap().to_string();
    let state = param(&url, "state").unwrap();

    // Wrong state with a code: 400, and the forged code is never exchanged.
    let r = get(&callback(
        port,
        &[("code", "forged-code"), ("state", "not-the-state")],
    ));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("state"), "{}", r.body);
    // No state at all.
    assert_eq!(get(&callback(port, &[("code", "forged-code")])).status, 400);
    // An IdP-looking error with the wrong state must not end the login.
    let r = get(&callback(
        port,
        &[("error", "access_denied"), ("state", "not-the-state")],
    ));
    assert_eq!(r.status, 400);
    // Other paths: 404.
    assert_eq!(
        get(&format!("http://localhost:{port}/favicon.ico")).status,
        404
    );
    // The right state without a code: refused, still waiting.
    assert_eq!(get(&callback(port, &[("state", &state)])).status, 400);
    std::thread::sleep(Duration::from_millis(200));
    assert!(p.running(), "a forged callback ended the login");

    let run = complete(&mut p, &url);
    assert_eq!(run.json_lines().last().unwrap()["event"], "logged_in");
    let c = env.idp().counters();
    assert_eq!(
        c.authorization_code_requests, 1,
        "only the real code may reach the token endpoint: {c:?}"
    );
    assert!(env.store_file().is_file());
}

/// The IdP's approve/deny page (auto-approval off): (request_id, page).
fn idp_page(url: &str) -> String {
    let r = get(url);
    assert_eq!(r.status, 200, "the IdP's authorization page: {}", r.body);
    let marker = "name=\"request_id\" value=\"";
    let i = r.body.find(marker).expect("a request_id in the page") + marker.len();
    let id = &r.body[i..];
    id[..id.find('"').unwrap()].to_string()
}

fn decide(base: &str, request_id: &str, action: &str) -> String {
    let r = http(
        "POST",
        &format!("{base}/authorize/approve"),
        Some(&format!(
            "request_id={}&action={action}",
            pct_encode(request_id)
        )),
    )
    .unwrap();
    assert!(matches!(r.status, 302 | 303), "{} {}", r.status, r.body);
    r.header("location").unwrap().to_string()
}

#[test]
fn denied_at_the_idp_is_exit_41() {
    let (env, port) = browser_env(manual_idp());
    let (mut p, ev) = start_login(&env, &["--browser", "--no-browser"], &[]);
    let url = ev["url"].as_str().unwrap().to_string();
    let id = idp_page(&url);
    let location = decide(env.base_url(), &id, "deny");
    assert!(location.starts_with(&format!("http://localhost:{port}/auth/callback?")));
    assert_eq!(param(&location, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&location, "state"), param(&url, "state"));

    let r = get(&location);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("access_denied"), "{}", r.body);
    let run = p.finish();
    run.expect_code(41);
    assert!(run.stderr.contains("access_denied"), "{run:?}");
    assert!(run.stderr.contains("hint: "), "{run:?}");
    assert!(
        !run.stdout.contains("logged_in"),
        "no logged_in event after a denial: {run:?}"
    );
    assert!(!env.store_file().exists(), "a denied login wrote a store");
    assert_eq!(env.idp().counters().authorization_code_requests, 0);
}

#[test]
fn forged_error_with_the_right_state_is_exit_41() {
    // What a browser brings back when the IdP refuses (RFC 6749 §4.1.2.1), built by hand.
    let (env, port) = browser_env(fast_idp_config());
    let (mut p, ev) = start_login(&env, &["--browser", "--no-browser"], &[]);
    let state = param(ev["url"].as_str().unwrap(), "state").unwrap();
    let r = get(&callback(
        port,
        &[
            ("error", "access_denied"),
            ("error_description", "the user said <no>"),
            ("state", &state),
        ],
    ));
    assert_eq!(r.status, 400);
    assert!(
        !r.body.contains("<no>"),
        "the error page must escape what the request carries: {}",
        r.body
    );
    let run = p.finish();
    run.expect_code(41);
    assert!(run.stderr.contains("access_denied"), "{run:?}");
    assert!(!env.store_file().exists());
}

#[test]
fn approved_at_the_idp_page_after_a_while() {
    let (env, _port) = browser_env(manual_idp());
    let (mut p, ev) = start_login(&env, &["--browser", "--no-browser"], &[]);
    let url = ev["url"].as_str().unwrap().to_string();
    let id = idp_page(&url);
    // A user who takes their time: the listener keeps waiting (its timeout is minutes).
    std::thread::sleep(Duration::from_secs(3));
    assert!(p.running());
    let location = decide(env.base_url(), &id, "approve");
    let r = get(&location);
    assert_eq!(r.status, 200);
    let run = p.finish();
    run.expect_code(0);
    assert!(
        run.stderr.contains(qlam_test_idp::APPROVING_USER),
        "login says who: {run:?}"
    );
    let (at, rt) = env.tokens();
    assert!(env.idp().introspect(&at) && env.idp().introspect(&rt));
}

#[test]
fn a_busy_redirect_port_is_a_clear_error() {
    let (env, port) = browser_env(fast_idp_config());
    let _squatter = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let r = env.run(&["login", "--browser", "--no-browser"]);
    r.expect_failure(40);
    assert!(r.stderr.contains(&port.to_string()), "{r:?}");
    assert!(
        r.stderr.contains("redirect_port") && r.stderr.contains("--device"),
        "{r:?}"
    );
    assert!(!env.store_file().exists());
}

#[test]
fn the_default_redirect_port_is_18080() {
    // Only when 18080 is free here; anything else on this machine may hold it.
    let env = TestEnv::with_idp(fast_idp_config());
    if TcpListener::bind(("127.0.0.1", 18080)).is_err() {
        return;
    }
    let (_p, ev) = start_login(&env, &["--browser", "--no-browser"], &[]);
    assert_eq!(ev["event"], "authorization_request");
    assert_eq!(
        param(ev["url"].as_str().unwrap(), "redirect_uri").as_deref(),
        Some("http://localhost:18080/auth/callback")
    );
}

/// A `$BROWSER` that writes its first argument to `record`.
fn fake_browser(dir: &Path, record: &Path) -> PathBuf {
    let path = dir.join("fake-browser");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" > '{}.tmp' && mv '{0}.tmp' '{0}'\n",
            record.display()
        ),
    )
    .unwrap();
    crate::support::chmod(&path, 0o755);
    path
}

#[test]
fn browser_is_opened_with_the_url_from_the_browser_variable() {
    let (env, port) = browser_env(fast_idp_config());
    let opened = env.root().join("opened-url");
    let browser = fake_browser(env.root(), &opened);
    // $BROWSER is a colon-separated list: the first that starts wins.
    let list = format!("/nonexistent/browser:{}", browser.display());
    let (mut p, ev) = start_login(
        &env,
        &["--browser"],
        &[
            ("BROWSER", &list),
            ("SSH_CONNECTION", "192.0.2.9 5555 192.0.2.2 22"),
        ],
    );
    let url = ev["url"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !opened.exists() {
        assert!(Instant::now() < deadline, "$BROWSER was not started");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&opened).unwrap().trim(), url);
    let run = complete(&mut p, &url);
    assert!(run.stderr.contains("Opened your browser"), "{run:?}");
    // Over SSH the redirect port must be forwarded: the message says how.
    assert!(
        run.stderr
            .contains(&format!("ssh -L {port}:localhost:{port}")),
        "{run:?}"
    );
}

#[test]
fn confidential_client_sends_its_secret_and_can_revoke() {
    let secret = "conf-secret-value-1234";
    let cfg = IdpConfig {
        clients: vec![ClientSpec::confidential("qlam-conf", secret)],
        ..fast_idp_config()
    };
    let (env, _port) = browser_env(cfg);
    let vars = [
        ("QLAM_CLIENT_ID", "qlam-conf"),
        ("QLAM_CLIENT_SECRET", secret),
    ];
    let (mut p, ev) = start_login(&env, &["--browser", "--no-browser"], &vars);
    let url = ev["url"].as_str().unwrap().to_string();
    let run = complete(&mut p, &url);
    assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
    assert!(
        !url.contains(secret),
        "the secret is in the authorization URL"
    );
    let ex = env
        .idp()
        .requests()
        .into_iter()
        .find(|q| q.grant_type.as_deref() == Some("authorization_code"))
        .unwrap();
    assert_eq!(ex.auth_method, "post");
    assert_eq!(ex.status, Some(200));

    let (_, rt) = env.tokens();
    let r = command_run(&env, &["logout", "--revoke"], &vars);
    r.expect_code(0);
    assert!(!r.stderr.contains(secret));
    assert!(
        !env.idp().introspect(&rt),
        "the refresh token is still active"
    );
    let rev = env
        .idp()
        .requests()
        .into_iter()
        .find(|q| q.endpoint == "revocation")
        .expect("a revocation request");
    assert_eq!(rev.auth_method, "post");
    assert_eq!(
        rev.values.get("token_type_hint").map(String::as_str),
        Some("refresh_token")
    );
}

fn command_run(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Run {
    crate::support::run_command(command(env, args, vars))
}

// ---- which flow `login` picks ----

/// The first event of `login -o json ARGS` (the process is killed afterwards).
fn first_event(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> String {
    let (_p, ev) = start_login(env, args, vars);
    ev["event"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_display_and_no_grant_type_pick_the_browser_flow() {
    let (env, _port) = browser_env(fast_idp_config());
    let vars = [("QLAM_GRANT_TYPE", ""), ("DISPLAY", ":0")];
    let (mut p, ev) = start_login(&env, &["--no-browser", "--no-qr"], &vars);
    assert_eq!(ev["event"], "authorization_request", "{ev}");
    complete(&mut p, ev["url"].as_str().unwrap());
    assert_eq!(store_meta(&env)["grant_type"], "authorization_code");

    let wayland = [("QLAM_GRANT_TYPE", ""), ("WAYLAND_DISPLAY", "wayland-0")];
    assert_eq!(
        first_event(&env, &["--no-browser"], &wayland),
        "authorization_request"
    );
}

#[test]
fn no_display_and_no_grant_type_pick_the_device_flow() {
    let (env, _port) = browser_env(fast_idp_config());
    let vars = [
        ("QLAM_GRANT_TYPE", ""),
        ("DISPLAY", ""),
        ("WAYLAND_DISPLAY", ""),
    ];
    let (mut p, ev) = start_login(&env, &["--no-qr", "--no-browser"], &vars);
    assert_eq!(ev["event"], "device_authorization", "{ev}");
    p.finish().expect_code(0);
    assert_eq!(store_meta(&env)["grant_type"], "device_code");
}

#[test]
fn the_configured_grant_type_wins_over_the_display() {
    let (env, _port) = browser_env(fast_idp_config());
    // device_code configured (the test environment's default), a display present.
    assert_eq!(
        first_event(&env, &["--no-qr", "--no-browser"], &[("DISPLAY", ":0")]),
        "device_authorization"
    );
    // authorization_code configured, no display.
    assert_eq!(
        first_event(
            &env,
            &["--no-browser"],
            &[("QLAM_GRANT_TYPE", "authorization_code"), ("DISPLAY", "")]
        ),
        "authorization_request"
    );
}

#[test]
fn device_and_browser_flags_override_everything() {
    let (env, _port) = browser_env(fast_idp_config());
    assert_eq!(
        first_event(
            &env,
            &["--device", "--no-qr"],
            &[("QLAM_GRANT_TYPE", ""), ("DISPLAY", ":0")]
        ),
        "device_authorization"
    );
    assert_eq!(
        first_event(
            &env,
            &["--device", "--no-qr"],
            &[("QLAM_GRANT_TYPE", "authorization_code")]
        ),
        "device_authorization"
    );
    assert_eq!(
        first_event(&env, &["--browser", "--no-browser"], &[]),
        "authorization_request",
        "--browser must win over grant_type = device_code"
    );
    env.run(&["login", "--device", "--browser"]).expect_code(2);
}

// ---- logout --revoke ----

#[test]
fn logout_revoke_after_a_browser_login() {
    let (env, _port) = browser_env(fast_idp_config());
    let (mut p, ev) = start_login(&env, &["--browser", "--no-browser"], &[]);
    complete(&mut p, ev["url"].as_str().unwrap());
    let (at, rt) = env.tokens();
    assert!(env.idp().introspect(&rt));

    let r = env.run(&["-o", "json", "logout", "--revoke"]);
    r.expect_code(0);
    let j = r.json();
    assert_eq!(j["revoked"], true);
    assert_eq!(j["removed"], true);
    assert!(r.stderr.contains("revoked"), "{r:?}");
    assert!(
        !env.idp().introspect(&rt),
        "the refresh token is still active"
    );
    assert!(
        !env.idp().introspect(&at),
        "the login's access token is still active"
    );
    assert_eq!(env.idp().counters().revocations, 1);
    assert!(
        !env.store_file().exists(),
        "logout left the credentials file"
    );
    assert!(env.lock_file().is_file(), "logout must keep the lock file");
    assert_eq!(mode(&env.lock_file()), 0o600);
    env.run(&["token"]).expect_failure(41);
}

#[test]
fn logout_revoke_when_not_logged_in_stays_local() {
    let env = TestEnv::new();
    let r = env.run(&["logout", "--revoke"]);
    r.expect_code(0);
    assert!(r.stderr.contains("not logged in"), "{r:?}");
    assert_eq!(env.idp_calls(), 0, "nothing to revoke: no IdP request");
}

#[test]
fn logout_revoke_with_the_idp_down_keeps_the_credentials() {
    let mut env = TestEnv::new();
    env.login();
    env.stop_idp();
    let r = env.run(&["logout", "--revoke"]);
    r.expect_failure(11);
    assert!(r.stderr.contains("revok"), "{r:?}");
    // The refresh token is still valid at the IdP: keep it so that the revocation can be
    // retried (or the file removed with a plain `logout`).
    assert!(env.store_file().is_file());
    env.run(&["logout"]).expect_code(0);
    assert!(!env.store_file().exists());
}

/// A discovery document server on loopback: serves `doc` at the OIDC well-known path, 404
/// for anything else. The thread lives as long as the test process.
fn serve_discovery(doc: Value) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    let body = doc.to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => break,
                }
            }
            let line = String::from_utf8_lossy(&head).to_string();
            let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, text) = if target == "/.well-known/openid-configuration" {
                ("200 OK", body.as_str())
            } else {
                ("404 Not Found", "{\"error\":\"not_found\"}")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    base
}

#[test]
fn logout_revoke_without_a_revocation_endpoint_is_a_clear_error() {
    let env = TestEnv::new();
    env.login();
    // The same IdP, described by a discovery document without revocation_endpoint.
    let disc = get(&format!(
        "{}/.well-known/openid-configuration",
        env.base_url()
    ));
    assert_eq!(disc.status, 200);
    let mut doc: Value = serde_json::from_str(&disc.body).unwrap();
    doc.as_object_mut().unwrap().remove("revocation_endpoint");
    let stub = serve_discovery(doc);
    let vars = [("QLAM_AUTH_BASE_URL", stub.as_str())];

    let r = command_run(&env, &["logout", "--revoke"], &vars);
    r.expect_failure(40);
    assert!(r.stderr.contains("revocation"), "{r:?}");
    assert!(
        r.stderr.contains("without --revoke"),
        "the hint must say how to log out anyway: {r:?}"
    );
    assert!(
        env.store_file().is_file(),
        "a failed --revoke must not remove the credentials"
    );
    assert_eq!(env.idp().counters().revocations, 0);
    let (_, rt) = env.tokens();
    assert!(env.idp().introspect(&rt));

    command_run(&env, &["logout"], &vars).expect_code(0);
    assert!(!env.store_file().exists());
}

#[test]
fn the_store_written_by_a_browser_login_reads_as_json() {
    // The file is QLAM Core's format: exactly the top-level keys of DESIGN §5.
    let (env, _port) = browser_env(fast_idp_config());
    let (mut p, ev) = start_login(&env, &["--browser", "--no-browser"], &[]);
    complete(&mut p, ev["url"].as_str().unwrap());
    let doc = read_json(&env.store_file());
    let mut keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "context",
            "created_at",
            "data",
            "expires_at",
            "extra",
            "plugin",
            "updated_at",
            "version"
        ]
    );
    let mut td: Vec<&String> = doc["extra"]["token_data"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    td.sort();
    assert_eq!(
        td,
        [
            "access_token",
            "created_at",
            "expires_in",
            "id_token",
            "refresh_token",
            "scope",
            "token_type"
        ]
    );
}

#[test]
fn a_forged_code_with_the_right_state_fails_the_exchange() {
    // Should the state leak, a made-up code still gets no tokens: the IdP refuses it.
    let (env, port) = browser_env(fast_idp_config());
    let (mut p, ev) = start_login(&env, &["--browser", "--no-browser"], &[]);
    let state = param(ev["url"].as_str().unwrap(), "state").unwrap();
    let _ = get(&callback(
        port,
        &[("code", "ac_made-up"), ("state", &state)],
    ));
    let run = p.finish();
    run.expect_code(41);
    assert!(run.stderr.contains("invalid_grant"), "{run:?}");
    assert!(run.stderr.contains("hint: "), "{run:?}");
    assert!(!run.stdout.contains("logged_in"), "{run:?}");
    assert!(!env.store_file().exists());
    let c = env.idp().counters();
    assert_eq!(c.authorization_code_requests, 1, "{c:?}");
}

#[test]
fn an_idp_without_an_authorization_endpoint_is_a_clear_error() {
    let (env, _port) = browser_env(fast_idp_config());
    let disc = get(&format!(
        "{}/.well-known/openid-configuration",
        env.base_url()
    ));
    let mut doc: Value = serde_json::from_str(&disc.body).unwrap();
    doc.as_object_mut()
        .unwrap()
        .remove("authorization_endpoint");
    let stub = serve_discovery(doc);
    let r = command_run(
        &env,
        &["login", "--browser", "--no-browser"],
        &[("QLAM_AUTH_BASE_URL", stub.as_str())],
    );
    r.expect_failure(40);
    assert!(r.stderr.contains("authorization_endpoint"), "{r:?}");
    assert!(r.stderr.contains("--device"), "{r:?}");
}

#[test]
fn browser_login_is_refused_inside_a_batch_job() {
    let (env, _port) = browser_env(fast_idp_config());
    let r = command_run(
        &env,
        &["login", "--browser", "--no-browser"],
        &[("SLURM_JOB_ID", "4242")],
    );
    r.expect_failure(41);
    assert!(r.stderr.contains("login node"), "{r:?}");
    assert_eq!(env.idp_calls(), 0);
}

#[test]
fn quiet_browser_login_still_shows_the_url() {
    let (env, port) = browser_env(fast_idp_config());
    let mut p = LoginProc::spawn(command(
        &env,
        &["-q", "login", "--browser", "--no-browser"],
        &[],
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while listening_on("/proc/net/tcp", port).is_empty() {
        assert!(Instant::now() < deadline, "the listener never came up");
        assert!(p.running(), "login exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = p.child.kill();
    let run = p.finish();
    assert!(
        run.stderr.contains("/authorize?"),
        "the user is never told where to log in: {run:?}"
    );
}
