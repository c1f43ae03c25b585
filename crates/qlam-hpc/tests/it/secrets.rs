//! DESIGN §9: no token reaches stderr at any verbosity, whatever happens. Every run in this
//! suite goes through `support::run_command`, which checks stderr for token-shaped values;
//! this module drives the noisiest paths at `-vv` and also checks for the exact values.

use qlam_test_idp::{Endpoint, Fault};

use crate::support::{Run, TestEnv, assert_not_contains};

#[track_caller]
fn no_known_secret(r: &Run, secrets: &[String]) {
    for s in secrets {
        assert_not_contains(&r.stderr, s, "stderr");
    }
}

#[test]
fn nothing_secret_on_stderr_at_vv() {
    let env = TestEnv::new();
    let login = env.run(&["-vv", "login", "--device", "--no-qr"]);
    login.expect_code(0);
    let (at0, rt0) = env.tokens();
    let id0 = env.store()["extra"]["token_data"]["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut secrets = vec![at0, rt0, id0];
    no_known_secret(&login, &secrets);

    // Hot path, forced refresh, due refresh after retried faults.
    for args in [
        &["-vv", "token"][..],
        &["-vv", "status"],
        &["-vv", "env"],
        &["-vv", "refresh", "--force"],
    ] {
        let r = env.run(args);
        r.expect_code(0);
        no_known_secret(&r, &secrets);
    }
    let (at1, rt1) = env.tokens();
    secrets.extend([at1, rt1]);
    env.set_remaining(-5.0);
    env.idp()
        .push_fault(Endpoint::Token, Fault::Status(503), Some(1));
    env.idp()
        .push_fault(Endpoint::Token, Fault::MalformedJson, Some(1));
    env.idp().push_fault(Endpoint::Token, Fault::Drop, Some(1));
    let r = env.run(&["-vv", "token"]);
    r.expect_code(0);
    no_known_secret(&r, &secrets);
    let (at2, rt2) = env.tokens();
    secrets.extend([at2, rt2]);

    // Failures: an outage, then a rejected refresh token, at -vv (whole cause chains).
    env.set_remaining(-5.0);
    env.idp()
        .push_fault(Endpoint::Token, Fault::Status(500), None);
    let r = env.run_env(&["-vv", "token"], &[("QLAM_REFRESH_DEADLINE", "1s")]);
    r.expect_code(50);
    no_known_secret(&r, &secrets);
    env.idp().clear_faults();
    // A new login clears the recorded outage; then the IdP revokes it.
    let r = env.run(&["-vv", "login", "--device", "--no-qr"]);
    r.expect_code(0);
    no_known_secret(&r, &secrets);
    let (at3, rt3) = env.tokens();
    secrets.extend([at3, rt3]);
    env.idp().revoke_all();
    let r = env.run(&["-vv", "refresh", "--force"]);
    r.expect_code(41);
    no_known_secret(&r, &secrets);
    env.set_remaining(-5.0);
    let r = env.run(&["-vv", "exec", "--", "true"]);
    r.expect_code(41);
    no_known_secret(&r, &secrets);
    let r = env.run(&["-vv", "-o", "json", "status"]);
    no_known_secret(&r, &secrets);
    assert!(
        !crate::support::has_secret(&r.stdout),
        "status shows no token"
    );
    let r = env.run(&["-vv", "logout"]);
    r.expect_code(0);
    no_known_secret(&r, &secrets);
}

#[test]
fn corrupt_store_error_does_not_echo_the_file() {
    let env = TestEnv::new();
    env.login();
    let (at, rt) = env.tokens();
    // A truncated file still holding the tokens: the parse error must not quote them.
    let text = std::fs::read_to_string(env.store_file()).unwrap();
    let cut = text.find(&rt).unwrap() + rt.len() + 2;
    std::fs::write(env.store_file(), &text[..cut]).unwrap();
    let r = env.run(&["-vv", "token"]);
    r.expect_code(60);
    assert_not_contains(&r.stderr, &at, "stderr");
    assert_not_contains(&r.stderr, &rt, "stderr");
}
