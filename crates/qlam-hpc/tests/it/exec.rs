//! `exec -- CMD`: the child gets the token in its environment and in a private file that is
//! renewed while it runs; its exit status and signals pass through.

use std::path::Path;
use std::time::{Duration, Instant};

use qlam_test_idp::IdpConfig;

use crate::support::{TestEnv, fast_idp_config, now_unix, wait_bounded};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn child_sees_the_token_its_expiry_and_a_private_token_file() {
    let env = TestEnv::new();
    env.login();
    let (at, _) = env.tokens();
    let out = env.root().join("out");
    std::fs::create_dir(&out).unwrap();
    let script = r#"
        printf '%s' "$QLAM_ACCESS_TOKEN" > "$1/env_token"
        printf '%s' "$QLAM_TOKEN_EXPIRES_AT" > "$1/expires"
        printf '%s' "$QLAM_ACCESS_TOKEN_FILE" > "$1/path"
        cat "$QLAM_ACCESS_TOKEN_FILE" > "$1/file_token"
        stat -c %a "$QLAM_ACCESS_TOKEN_FILE" > "$1/mode"
        stat -c %a "$(dirname "$QLAM_ACCESS_TOKEN_FILE")" > "$1/dir_mode"
        echo hello from the child
    "#;
    let r = env.run(&[
        "exec",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        out.to_str().unwrap(),
    ]);
    r.expect_code(0);
    assert_eq!(
        r.stdout, "hello from the child\n",
        "the child's stdout passes through"
    );
    assert_eq!(r.stderr, "");

    assert!(
        read(&out.join("env_token")) == at,
        "QLAM_ACCESS_TOKEN is not the stored token"
    );
    assert!(
        read(&out.join("file_token")) == format!("{at}\n"),
        "the token file does not hold the token"
    );
    assert_eq!(read(&out.join("mode")).trim(), "600");
    assert_eq!(read(&out.join("dir_mode")).trim(), "700");
    let exp: f64 = read(&out.join("expires"))
        .parse()
        .expect("QLAM_TOKEN_EXPIRES_AT is unix seconds");
    let want = env.run(&["-o", "json", "token"]).json()["expires_at"]
        .as_f64()
        .unwrap();
    assert_eq!(exp, want);
    assert!(exp > now_unix() + 3000.0);
    let path = read(&out.join("path"));
    assert!(
        path.starts_with(env.root().join("run").to_str().unwrap()),
        "token file {path} is not in the runtime dir"
    );
    assert!(
        !Path::new(&path).exists(),
        "the token file must be removed when the command ends"
    );
}

#[test]
fn arguments_pass_through_verbatim() {
    let env = TestEnv::new();
    env.login();
    let r = env.run(&[
        "exec", "--", "printf", "%s|", "a", "b c", "--flag", "-o", "json", "",
    ]);
    r.expect_code(0);
    assert_eq!(r.stdout, "a|b c|--flag|-o|json||");
    // Without `--` too: everything after CMD belongs to CMD.
    let r = env.run(&["exec", "printf", "%s|", "-v", "--min-ttl"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "-v|--min-ttl|");
}

#[test]
fn exit_status_is_propagated() {
    let env = TestEnv::new();
    env.login();
    env.run(&["exec", "--", "sh", "-c", "exit 7"])
        .expect_code(7);
    env.run(&["exec", "--", "false"]).expect_code(1);
    env.run(&["exec", "--", "true"]).expect_code(0);
    // Killed by a signal: 128 + the signal, as shells report it.
    env.run(&["exec", "--", "sh", "-c", "kill -KILL $$"])
        .expect_code(137);
}

#[test]
fn command_not_found_is_127_and_not_executable_is_126() {
    let env = TestEnv::new();
    env.login();
    let r = env.run(&["exec", "--", "qlam-hpc-no-such-command"]);
    r.expect_code(127);
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("qlam-hpc-no-such-command"), "{r:?}");

    let script = env.root().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    crate::support::chmod(&script, 0o644);
    env.run(&["exec", "--", script.to_str().unwrap()])
        .expect_code(126);
    // Nothing left behind in the runtime dir.
    let leftovers: Vec<_> = std::fs::read_dir(env.root().join("run"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("exec-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn exec_without_a_login_does_not_run_the_command() {
    let env = TestEnv::new();
    let marker = env.root().join("ran");
    let r = env.run(&["exec", "--", "touch", marker.to_str().unwrap()]);
    r.expect_failure(41);
    assert!(!marker.exists(), "the command must not run without a token");
}

#[test]
fn a_long_running_command_gets_a_renewed_token_file() {
    let env = TestEnv::with_idp(IdpConfig {
        access_token_ttl: 4,
        ..fast_idp_config()
    });
    env.login();
    let out = env.root().join("out");
    std::fs::create_dir(&out).unwrap();
    let script = r#"
        cat "$QLAM_ACCESS_TOKEN_FILE" > "$1/first"
        sleep 5
        cat "$QLAM_ACCESS_TOKEN_FILE" > "$1/last"
        printf '%s\n' "$QLAM_ACCESS_TOKEN" > "$1/env"
    "#;
    let r = env.run(&[
        "exec",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        out.to_str().unwrap(),
    ]);
    r.expect_code(0);
    assert_eq!(r.stderr, "");
    let first = read(&out.join("first"));
    let last = read(&out.join("last"));
    assert!(
        first == read(&out.join("env")),
        "the file starts with the token of the environment"
    );
    assert!(
        first != last,
        "the token file was not renewed while the command ran"
    );
    let last = last.trim_end();
    assert!(
        env.idp().introspect(last),
        "the renewed token must be valid at the IdP"
    );
    assert!(
        env.tokens().0 == last,
        "the renewed token is the store's current one"
    );
    let c = env.idp().counters();
    assert!(c.refresh_requests >= 1 && c.refresh_requests <= 4, "{c:?}");
    assert_eq!(c.refresh_ok, c.refresh_requests);
    assert_eq!(c.families_revoked, 0);
}

#[test]
fn signals_are_forwarded_to_the_command() {
    let env = TestEnv::new();
    env.login();
    let dir = env.root().join("sig");
    std::fs::create_dir(&dir).unwrap();
    let script = r#"
        trap 'echo usr1 >> "$1/usr1"' USR1
        trap 'echo term > "$1/term"; exit 3' TERM
        touch "$1/ready"
        while :; do sleep 0.05; done
    "#;
    let mut cmd = env.command(&[
        "exec",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        dir.to_str().unwrap(),
    ]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let wait_for = |p: &Path| {
        let t = Instant::now();
        while !p.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{} never appeared",
                p.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(&dir.join("ready"));

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    wait_for(&dir.join("usr1"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let r = wait_bounded(child, start);
    crate::support::assert_no_secrets_in_stderr(&r);
    assert_eq!(
        read(&dir.join("term")),
        "term\n",
        "the child's TERM trap did not run"
    );
    assert_eq!(read(&dir.join("usr1")), "usr1\n");
    r.expect_code(3);
}
