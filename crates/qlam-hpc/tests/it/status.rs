//! `status` (text and JSON, DESIGN §4's fields; exit 0 when usable, 41 when a login is
//! needed) and `logout` (removes the credentials, keeps the lock file).

use crate::support::{TestEnv, now_unix};

#[test]
fn status_when_logged_in() {
    let env = TestEnv::new();
    env.login();
    let before = env.idp_calls();

    let r = env.run(&["status"]);
    r.expect_code(0);
    let out = &r.stdout;
    let store = env.store_file().display().to_string();
    for (label, want) in [
        ("context", "default"),
        ("provider", "qlam (device_code)"),
        ("user", qlam_test_idp::AUTO_APPROVED_USER),
        ("access token", "valid for "),
        ("logged in", " ago)"),
        ("login expires (est.)", ""),
        ("refresh token", "present"),
        ("store", store.as_str()),
        ("lock method", "auto"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(label) && l[label.len()..].starts_with("  "))
            .unwrap_or_else(|| panic!("no {label:?} line in status: {r:?}"));
        assert!(
            line.contains(want),
            "{label:?} line {line:?} lacks {want:?}"
        );
    }
    assert!(
        !out.contains("last refresh"),
        "no refresh happened yet: {r:?}"
    );
    assert!(!out.contains("last error"), "{r:?}");

    let j = env.run(&["-o", "json", "status"]);
    j.expect_code(0);
    let v = j.json();
    let now = now_unix();
    assert_eq!(v["context"], "default");
    assert_eq!(v["provider"], "qlam");
    assert_eq!(v["grant_type"], "device_code");
    assert_eq!(v["logged_in"], true);
    assert_eq!(v["usable"], true);
    assert_eq!(v["access_token_valid"], true);
    assert_eq!(v["has_refresh_token"], true);
    assert_eq!(v["store_path"], store.as_str());
    assert_eq!(v["lock_method"], "auto");
    assert_eq!(v["subject"], qlam_test_idp::AUTO_APPROVED_USER);
    assert!(v["email"].as_str().is_some_and(|e| e.contains('@')), "{v}");
    let exp = v["access_token_expires_at"].as_f64().unwrap();
    assert!(exp > now + 3500.0 && exp <= now + 3600.0, "{v}");
    let left = v["access_token_expires_in"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "{v}");
    assert!(v["login_at"].as_str().is_some(), "{v}");
    assert!(
        v["login_age_seconds"]
            .as_i64()
            .is_some_and(|a| (0..60).contains(&a)),
        "{v}"
    );
    // 15 days after the login by default.
    let est = v["refresh_token_expires_at_estimate"].as_str().unwrap();
    assert!(
        est.starts_with(&crate::support::iso_utc(now + 15.0 * 86_400.0)[..10]),
        "{v}"
    );
    assert!(v["last_refresh_at"].is_null(), "{v}");
    assert!(v["last_error"].is_null(), "{v}");
    assert!(
        v["m2m_monthly_budget"].is_null() && v["m2m_mints_this_month"].is_null(),
        "{v}"
    );
    assert_eq!(v["generation"], 1);
    for key in [
        "last_refresh_host",
        "last_refresh_pid",
        "last_refresh_job",
        "name",
    ] {
        assert!(v.get(key).is_some(), "status -o json lacks {key}: {v}");
    }

    assert_eq!(env.idp_calls(), before, "status never calls the IdP");
}

#[test]
fn status_shows_the_last_refresh_with_host_pid_and_job() {
    let env = TestEnv::new();
    env.login();
    env.run_env(
        &["refresh", "--force"],
        &[("SLURM_JOB_ID", "4242"), ("SLURM_ARRAY_TASK_ID", "7")],
    )
    .expect_code(0);
    let by = &env.store()["extra"]["qlam_hpc"]["refreshed_by"];
    let pid = by["pid"].as_u64().unwrap();

    let v = env.run(&["-o", "json", "status"]).json();
    assert!(v["last_refresh_at"].as_str().is_some(), "{v}");
    assert_eq!(v["last_refresh_host"], by["host"]);
    assert_eq!(v["last_refresh_pid"].as_u64(), Some(pid));
    assert_eq!(v["last_refresh_job"], "4242_7");

    let r = env.run(&["status"]);
    r.expect_code(0);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("last refresh"))
        .expect("last refresh line");
    assert!(
        line.contains(&format!("pid {pid}")) && line.contains("job 4242_7"),
        "{line}"
    );
}

#[test]
fn status_when_not_logged_in_exits_41() {
    let env = TestEnv::new();
    let r = env.run(&["status"]);
    r.expect_code(41);
    assert!(r.stdout.contains("not logged in"), "{r:?}");
    assert!(
        r.stderr.contains("qlam-hpc login"),
        "status says what to do: {r:?}"
    );
    let v = env.run(&["-o", "json", "status"]).expect_code(41).json();
    assert_eq!(v["logged_in"], false);
    assert_eq!(v["usable"], false);
    assert_eq!(v["store_path"], env.store_file().display().to_string());
    assert_eq!(env.idp_calls(), 0);
}

#[test]
fn status_of_an_expired_token_with_a_refresh_token_is_usable() {
    let env = TestEnv::new();
    env.login();
    env.set_remaining(-60.0);
    let v = env.run(&["-o", "json", "status"]).expect_code(0).json();
    assert_eq!(v["access_token_valid"], false);
    assert_eq!(
        v["usable"], true,
        "an expired token that can be refreshed is usable: {v}"
    );
    let r = env.run(&["status"]);
    assert!(r.stdout.contains("expired "), "{r:?}");
}

#[test]
fn logout_removes_the_credentials_and_keeps_the_lock_file() {
    let env = TestEnv::new();
    env.login();
    // A refresh creates the lock file if login did not.
    env.run(&["refresh", "--force"]).expect_code(0);
    assert!(env.lock_file().is_file());
    let inode =
        || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(env.lock_file()).unwrap());
    let lock_inode = inode();
    let before = env.idp_calls();

    let r = env.run(&["logout"]);
    r.expect_code(0);
    assert!(
        !env.store_file().exists(),
        "logout left the credentials file"
    );
    assert!(env.lock_file().is_file(), "logout must keep the lock file");
    assert!(r.stderr.contains("logged out"), "{r:?}");
    assert_eq!(
        env.idp_calls(),
        before,
        "logout without --revoke stays local"
    );

    env.run(&["status"]).expect_code(41);
    env.run(&["token"]).expect_failure(41);

    // A second logout is harmless.
    let again = env.run(&["logout"]);
    again.expect_code(0);
    assert!(again.stderr.contains("not logged in"), "{again:?}");

    let j = env.run(&["-o", "json", "logout"]).expect_code(0).json();
    assert_eq!(j["removed"], false);

    // Logging in again reuses the same lock file: it is created once, never replaced.
    env.login();
    env.run(&["refresh", "--force"]).expect_code(0);
    assert_eq!(inode(), lock_inode, "the lock file was replaced");
}

#[test]
fn logout_revoke_revokes_the_refresh_token_first() {
    let env = TestEnv::new();
    env.login();
    let (at, rt) = env.tokens();
    let r = env.run(&["logout", "--revoke"]);
    r.expect_code(0);
    assert_eq!(env.idp().counters().revocations, 1);
    assert!(
        !env.idp().introspect(&rt),
        "the refresh token must be revoked"
    );
    assert!(
        !env.idp().introspect(&at),
        "the login's access tokens go with it"
    );
    assert!(!env.store_file().exists());
}

#[test]
fn logout_json_reports_the_removed_file() {
    let env = TestEnv::new();
    env.login();
    let j = env.run(&["-o", "json", "logout"]).expect_code(0).json();
    assert_eq!(j["removed"], true);
    assert_eq!(j["store_path"], env.store_file().display().to_string());
}
