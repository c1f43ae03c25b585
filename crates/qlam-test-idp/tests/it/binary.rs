//! The `qlam-test-idp` binary: start-up line, port file, shutdown on stdin close or signal.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use qlam_test_idp::JWT_BEARER_ASSERTION_TYPE;

use crate::common::*;
use crate::keys::{claims_for, keys, sign};

fn spawn(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qlam-test-idp"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim_end()
        .to_string();
    (child, base)
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the IdP did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_until_stdin_closes() {
    let dir = std::env::temp_dir().join(format!("qlam-test-idp-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port_file = dir.join("url");
    let (mut child, base) = spawn(&[
        "--exit-on-stdin-close",
        "--port-file",
        port_file.to_str().unwrap(),
        "--client",
        "m2m:pw",
        "--access-ttl",
        "60",
        "--m2m-quota",
        "1",
        "--device-interval",
        "none",
        "--oauth-only-discovery",
    ]);
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert_eq!(
        std::fs::read_to_string(&port_file).unwrap(),
        format!("{base}\n")
    );
    let mint = [
        ("grant_type", "client_credentials"),
        ("client_id", "m2m"),
        ("client_secret", "pw"),
    ];
    let r = post(&format!("{base}/oauth/token"), &mint);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["expires_in"], 60);
    assert_eq!(post(&format!("{base}/oauth/token"), &mint).status, 429);
    // The default public client is still there.
    let d = post(
        &format!("{base}/oauth/device/code"),
        &[("client_id", CLIENT)],
    )
    .json();
    assert!(d.get("interval").is_none());
    assert_eq!(
        get(&format!("{base}/.well-known/oauth-authorization-server")).status,
        200
    );

    drop(child.stdin.take());
    assert!(wait(&mut child).success());
    assert!(!port_file.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stops_on_sigterm() {
    let (mut child, base) = spawn(&["--auto-approve"]);
    assert_eq!(get(&format!("{base}/admin/counters")).status, 200);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait(&mut child).success());
    assert!(try_get(&format!("{base}/admin/counters")).is_err());
}

#[test]
fn verbose_logs_requests_to_stderr_without_tokens() {
    let (mut child, base) = spawn(&["-v", "--exit-on-stdin-close", "--client", "m2m:pw"]);
    let mint = [
        ("grant_type", "client_credentials"),
        ("client_id", "m2m"),
        ("client_secret", "pw"),
    ];
    let token = post(&format!("{base}/oauth/token"), &mint).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("POST /oauth/token grant_type=client_credentials -> 200"),
        "{stderr}"
    );
    assert!(!stderr.contains(&token) && !stderr.contains("pw\n"));
}

#[test]
fn refuses_a_non_loopback_bind() {
    let out = Command::new(env!("CARGO_BIN_EXE_qlam-test-idp"))
        .args(["--bind", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn client_keys_from_pem_files() {
    let k = keys();
    let key_arg = |spec: &str, path: &std::path::Path, kid: &str| {
        let (id, alg) = spec.split_once(':').unwrap();
        let kid = if kid.is_empty() {
            String::new()
        } else {
            format!(":{kid}")
        };
        format!("{id}:{alg}:{}{kid}", path.display())
    };
    let (mut child, base) = spawn(&[
        "--exit-on-stdin-close",
        "--client-key",
        &key_arg("jwt:RS256", &k.rsa.public_path, "k1"),
        "--client-key",
        &key_arg("jwt:es256", &k.ec.public_path, ""),
        "--client",
        "both:pw",
        "--client-key",
        &key_arg("both:PS256", &k.rsa_pkcs1.public_path, "p"),
    ]);
    let issuer = format!("{base}/");
    let mint = |assertion: &str| {
        post(
            &format!("{base}/oauth/token"),
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
                ("client_assertion", assertion),
            ],
        )
    };
    let rs = sign(
        &k.rsa,
        Algorithm::RS256,
        Some("k1"),
        &claims_for(&issuer, "jwt"),
    );
    assert_eq!(mint(&rs).status, 200);
    let es = sign(&k.ec, Algorithm::ES256, None, &claims_for(&issuer, "jwt"));
    assert_eq!(mint(&es).status, 200);
    let ps = sign(
        &k.rsa_pkcs1,
        Algorithm::PS256,
        Some("p"),
        &claims_for(&issuer, "both"),
    );
    assert_eq!(mint(&ps).status, 200);
    let secret = [
        ("grant_type", "client_credentials"),
        ("client_id", "both"),
        ("client_secret", "pw"),
    ];
    assert_eq!(post(&format!("{base}/oauth/token"), &secret).status, 200);
    let anonymous = [("grant_type", "client_credentials"), ("client_id", "jwt")];
    assert_eq!(post(&format!("{base}/oauth/token"), &anonymous).status, 401);
    let c = get(&format!("{base}/admin/counters")).json();
    assert_eq!(
        (&c["client_assertions"], &c["client_credentials_ok"]),
        (&serde_json::json!(3), &serde_json::json!(4))
    );
    drop(child.stdin.take());
    assert!(wait(&mut child).success());
}

#[test]
fn bad_client_keys_stop_the_binary() {
    let k = keys();
    let ec = k.ec.public_path.display().to_string();
    let rsa = k.rsa.public_path.display().to_string();
    for (arg, needle) in [
        ("jwt:RS256:/nonexistent/key.pem".to_string(), "cannot read"),
        (format!("jwt:HS256:{rsa}"), "unsupported algorithm"),
        (format!("jwt:ES256:{rsa}"), "\"jwt\""),
        (format!("jwt:RS256:{ec}:kid"), "\"jwt\""),
        ("jwt:RS256".to_string(), "expected ID:ALG"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_qlam-test-idp"))
            .args(["--client-key", &arg])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{arg}");
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{arg}: {stderr}");
    }
}
