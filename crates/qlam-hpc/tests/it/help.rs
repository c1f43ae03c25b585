//! The command-line interface itself: `--help` of the binary and of every subcommand is
//! snapshotted so that a change to flags or wording shows up in review; `--version`; usage
//! errors exit 2.

use assert_cmd::Command;

use crate::support::BIN;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("COLUMNS", "100")
        .args(args)
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .expect("run qlam-hpc")
}

fn help_of(args: &[&str]) -> String {
    let out = cli(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}");
    assert!(out.stderr.is_empty(), "help goes to stdout only");
    String::from_utf8(out.stdout).unwrap()
}

fn snapshot(name: &str, text: String) {
    insta::with_settings!({ prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn top_level_help() {
    snapshot("help", help_of(&["--help"]));
}

#[test]
fn subcommand_help() {
    for sub in [
        "login",
        "logout",
        "status",
        "token",
        "env",
        "exec",
        "refresh",
        "hook",
        "demo",
        "doctor",
        "check",
        "completions",
        "man",
    ] {
        snapshot(&format!("help_{sub}"), help_of(&[sub, "--help"]));
    }
}

#[test]
fn help_subcommand_matches_flag() {
    assert_eq!(help_of(&["help", "token"]), help_of(&["token", "--help"]));
}

#[test]
fn version() {
    let v = help_of(&["--version"]);
    assert_eq!(v, format!("qlam-hpc {}\n", env!("CARGO_PKG_VERSION")));
    // propagate_version: subcommands answer too.
    assert!(
        help_of(&["token", "--version"]).ends_with(&format!(" {}\n", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["token", "--bogus"],
        &["-o", "yaml", "status"],
        &["env", "--shell", "powershell"],
        &["exec"],
        &["login", "--device", "--browser"],
    ] {
        let out = cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            out.stdout.is_empty(),
            "{args:?}: usage errors print nothing on stdout"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Usage:") || err.contains("--help"),
            "{args:?}: stderr says where to look: {err}"
        );
    }
}

/// Messages tell people which command to run next; each such command must exist.
#[test]
fn commands_named_in_hints_exist() {
    use crate::support::{TestEnv, closed_port_url};
    let env = TestEnv::new();
    let mut stderr = env.run(&["token"]).stderr; // not logged in
    env.login();
    env.set_remaining(-30.0);
    stderr += &env
        .run_env(
            &["token"],
            &[
                ("QLAM_AUTH_BASE_URL", &closed_port_url()),
                ("QLAM_REFRESH_DEADLINE", "1s"),
            ],
        )
        .stderr;
    env.idp().push_fault(
        qlam_test_idp::Endpoint::Token,
        qlam_test_idp::Fault::Status(503),
        None,
    );
    stderr += &env
        .run_env(&["token"], &[("QLAM_REFRESH_DEADLINE", "1s")])
        .stderr;
    stderr += &env
        .run_env(&["token"], &[("QLAM_REFRESH_DEADLINE", "1s")])
        .stderr;
    env.idp().clear_faults();
    env.idp().revoke_all();
    stderr += &env.run(&["refresh", "--force"]).stderr;
    std::fs::write(env.store_file(), "garbage").unwrap();
    stderr += &env.run(&["token"]).stderr;
    let mut named: Vec<&str> = stderr
        .split("`qlam-hpc ")
        .skip(1)
        .filter_map(|s| s.split(['`', ' ']).next())
        .collect();
    named.sort_unstable();
    named.dedup();
    assert!(!named.is_empty());
    for cmd in named {
        let out = cli(&[cmd, "--help"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "a hint names `qlam-hpc {cmd}`, which does not exist"
        );
    }
}
