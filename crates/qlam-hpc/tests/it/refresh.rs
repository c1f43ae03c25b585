//! `refresh`: does nothing when the token is fresh, refreshes when due, always with
//! `--force`; each write bumps `extra.qlam_hpc.generation` and records who refreshed.

use crate::support::{TestEnv, now_unix, parse_iso_utc};

#[test]
fn refresh_when_not_due_does_nothing() {
    let env = TestEnv::new();
    env.login();
    let before = env.idp_calls();
    let bytes = std::fs::read(env.store_file()).unwrap();
    let r = env.run(&["refresh"]);
    r.expect_code(0);
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(r.stderr.contains("not due"), "{r:?}");
    assert_eq!(
        env.idp_calls(),
        before,
        "refresh of a fresh token must not call the IdP"
    );
    assert!(
        std::fs::read(env.store_file()).unwrap() == bytes,
        "the store was rewritten"
    );

    let j = env.run(&["-o", "json", "refresh"]).expect_code(0).json();
    assert_eq!(j["result"], "not due");
    assert_eq!(j["generation"], 1);
}

#[test]
fn refresh_when_due_refreshes() {
    let env = TestEnv::new();
    env.login();
    env.set_remaining(200.0);
    let j = env.run(&["-o", "json", "refresh"]).expect_code(0).json();
    assert_eq!(j["result"], "refreshed");
    assert_eq!(env.idp().counters().refresh_requests, 1);
    // `--min-ttl` decides what is due: 10 s left is enough for --min-ttl 5s.
    env.set_remaining(10.0);
    env.run(&["refresh", "--min-ttl", "5s"]).expect_code(0);
    assert_eq!(env.idp().counters().refresh_requests, 1);
}

#[test]
fn refresh_force_rotates_and_records_generation_and_author() {
    let env = TestEnv::new();
    env.login();
    let (at0, rt0) = env.tokens();
    let store0 = env.store();
    assert_eq!(store0["extra"]["qlam_hpc"]["generation"], 1);
    let start = now_unix();

    let r = env.run(&["-o", "json", "refresh", "--force"]);
    r.expect_code(0);
    let j = r.json();
    assert_eq!(j["result"], "refreshed");
    assert_eq!(j["generation"], 2);

    let (at1, rt1) = env.tokens();
    assert!(
        at1 != at0 && rt1 != rt0,
        "refresh --force did not rotate the tokens"
    );
    assert!(
        !env.idp().introspect(&rt0),
        "the old refresh token must be spent"
    );
    assert!(env.idp().introspect(&rt1) && env.idp().introspect(&at1));
    let s = env.store();
    let meta = &s["extra"]["qlam_hpc"];
    assert_eq!(meta["generation"], 2);
    assert_eq!(meta["grant_type"], "refresh_token");
    assert!(meta["last_error"].is_null(), "{meta}");
    let by = &meta["refreshed_by"];
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(by["host"], host.as_str());
    let pid = by["pid"].as_u64().expect("refreshed_by.pid");
    assert!(
        pid > 0 && pid != u64::from(std::process::id()),
        "pid is the qlam-hpc process's"
    );
    assert!(by["job_id"].is_null(), "no job outside a batch job: {by}");
    let refreshed_at = meta["refreshed_at"].as_str().expect("refreshed_at");
    let at = parse_iso_utc(refreshed_at);
    assert!(
        at >= start - 1.0 && at <= now_unix() + 1.0,
        "refreshed_at {refreshed_at} is not now"
    );
    // login_at survives refreshes; the file's own created_at too.
    assert_eq!(meta["login_at"], store0["extra"]["qlam_hpc"]["login_at"]);
    assert_eq!(s["created_at"], store0["created_at"]);

    // Generations keep increasing, one per write.
    for want in 3..=5 {
        env.run(&["refresh", "--force"]).expect_code(0);
        assert_eq!(env.generation(), want);
    }
    let c = env.idp().counters();
    assert_eq!(
        (c.refresh_requests, c.refresh_ok, c.families_revoked),
        (4, 4, 0)
    );
}

#[test]
fn refresh_in_a_pbs_job_records_the_job() {
    let env = TestEnv::new();
    env.login();
    env.run_env(&["refresh", "--force"], &[("PBS_JOBID", "123.pbs-server")])
        .expect_code(0);
    assert_eq!(
        env.store()["extra"]["qlam_hpc"]["refreshed_by"]["job_id"],
        "123.pbs-server"
    );
}

/// DESIGN §5: the file QLAM Core reads keeps exactly its keys after a refresh.
#[test]
fn refreshed_store_keeps_qlam_core_format() {
    let env = TestEnv::new();
    env.login();
    let before = now_unix();
    env.run(&["refresh", "--force"]).expect_code(0);
    let after = now_unix();
    let s = env.store();
    // created_at is taken just before the request, so the expiry errs early; QLAM Core's
    // expires_at is created_at truncated to the minute plus expires_in.
    let td = &s["extra"]["token_data"];
    let created = parse_iso_utc(td["created_at"].as_str().unwrap());
    assert!(
        created >= before - 0.5 && created <= after,
        "created_at {created} not within the run"
    );
    let lifetime = td["expires_in"].as_f64().unwrap();
    assert_eq!(lifetime, 3600.0);
    let core_expiry = parse_iso_utc(s["expires_at"].as_str().unwrap());
    assert_eq!(core_expiry, (created / 60.0).floor() * 60.0 + lifetime);
    assert!(parse_iso_utc(s["updated_at"].as_str().unwrap()) >= created);
    let mut top: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    top.sort_unstable();
    assert_eq!(
        top,
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
    assert_eq!(s["version"], 1);
    assert_eq!(s["plugin"], "oauth");
    assert_eq!(s["context"], "default");
    let mut td: Vec<&str> = s["extra"]["token_data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    td.sort_unstable();
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
    let mut extra: Vec<&str> = s["extra"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    extra.sort_unstable();
    assert_eq!(extra, ["qlam_hpc", "token_data"]);
    let (at, _) = env.tokens();
    let data = crate::support::base64_decode(s["data"].as_str().unwrap());
    assert!(
        data == format!("{{\"token\": \"{at}\"}}").into_bytes(),
        "data is not base64 of {{\"token\": ...}}"
    );
    assert_eq!(crate::support::mode(&env.store_file()), 0o600);
    assert_eq!(crate::support::mode(&env.credentials_dir()), 0o700);
    assert_eq!(crate::support::mode(&env.lock_file()), 0o600);
}
