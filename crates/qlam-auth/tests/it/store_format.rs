//! The store file stays compatible with QLAM Core 0.10.0 (DESIGN §5): golden files written
//! exactly as QLAM Core writes them are read, files qlam-hpc writes have exactly QLAM Core's
//! keys and expiry, foreign keys survive rewrites, and file names, modes and atomic writes
//! match what QLAM Core and ssh-style checks expect.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine;
use qlam_auth::flows::TokenResponse;
use qlam_auth::store::format::{LastError, RefreshedBy, iso_unix, parse_time};
use qlam_auth::store::single_flight::Source;
use qlam_auth::store::{self, Store, StoreFile};
use qlam_auth::{ErrorKind, Secret};
use serde_json::{Value, json};

use crate::support::{
    Sandbox, World, access_fp, assert_same_secret, mode, raw_json, refresh_fp, temp_files,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const DEVICE_LOGIN: &str = "qlam_core_0.10.0_device_login.json";
const NO_EXPIRY: &str = "qlam_core_0.10.0_no_expiry.json";

/// `extra.token_data.created_at` of the device-login fixture, in unix seconds.
const FIXTURE_CREATED: f64 = 1_795_897_032.123_456; // 2026-11-28T20:17:12.123456+00:00

fn fixture(name: &str) -> Vec<u8> {
    fs::read(Path::new(FIXTURES).join(name)).unwrap()
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn unix(s: &str) -> f64 {
    let t = parse_time(s).unwrap_or_else(|| panic!("unparsable time {s:?}"));
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6
}

fn now_unix() -> f64 {
    crate::support::now_unix()
}

/// Seconds to add to the real clock so that "now" is `at`.
fn offset_to(at: f64) -> i64 {
    (at - now_unix()).round() as i64
}

fn tokens(access: &str, refresh: Option<&str>, expires_in: Option<i64>) -> TokenResponse {
    TokenResponse {
        access_token: Secret::new(access),
        token_type: "Bearer".into(),
        expires_in,
        refresh_token: refresh.map(Secret::new),
        id_token: refresh.map(|_| Secret::new("idt.payload.")),
        scope: refresh.map(|_| "openid profile email offline_access".to_string()),
    }
}

/// A store in a fresh credentials directory (not yet created).
fn store_in(sb: &Sandbox, context: &str, provider: &str) -> Store {
    Store::new(
        &sb.credentials_dir(),
        context,
        provider,
        nix::unistd::getuid().as_raw(),
    )
}

/// Put `bytes` where `store` keeps its file, with the modes QLAM Core uses.
fn place(store: &Store, bytes: &[u8]) {
    fs::create_dir_all(&store.dir).unwrap();
    fs::set_permissions(&store.dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(&store.file, bytes).unwrap();
    fs::set_permissions(&store.file, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Run the QLAM Core 0.10.0 reader (tests/fixtures/qlam_core_reader.py) on `path`.
fn qlam_core_reads(path: &Path) -> Value {
    let out = Command::new("python3")
        .arg(fixture_path("qlam_core_reader.py"))
        .arg(path)
        .output()
        .expect("python3 is needed for the QLAM Core compatibility tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "QLAM Core would reject {}: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

/// Top-level keys in the order they appear in the text.
fn top_level_keys_in_order(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("  \""))
        .filter_map(|l| l.split_once('"').map(|(k, _)| k.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Golden files

#[test]
fn golden_qlam_core_file_is_read_with_its_expiry() {
    let path = fixture_path(DEVICE_LOGIN);
    let f = Store::parse(&fixture(DEVICE_LOGIN), &path).unwrap();
    assert_eq!(
        (f.version, f.plugin.as_str(), f.context.as_str()),
        (1, "oauth", "default")
    );
    assert_eq!(f.created_at, "2026-11-28 20:17:12.523114+00:00");
    assert_eq!(f.generation(), 0, "QLAM Core writes no qlam_hpc metadata");
    assert!(f.meta().is_none());
    let t = f.token().expect("token_data");
    assert_same_secret(&t.access_token, &Secret::new("at_fixture_4f1c2e"));
    assert_same_secret(
        t.refresh_token.as_ref().unwrap(),
        &Secret::new("rt_fixture_9a7d31"),
    );
    assert_eq!(t.token_type, "Bearer");
    assert_eq!(t.expires_in, Some(86_400));
    assert_eq!(
        t.scope.as_deref(),
        Some("openid profile email offline_access")
    );
    assert!(t.id_token.is_some());

    // Precise expiry from token_data; QLAM Core's from the minute.
    let precise = f.expires_at_unix().unwrap();
    assert!(
        (precise - (FIXTURE_CREATED + 86_400.0)).abs() < 1e-3,
        "{precise}"
    );
    let core = t.qlam_core_expires_at().unwrap();
    assert_eq!(core, parse_time(f.expires_at.as_deref().unwrap()).unwrap());
    assert_eq!(core.timestamp(), 1_795_897_020 + 86_400);

    // The helper reader agrees with the fixture (and so with QLAM Core).
    let core_view = qlam_core_reads(&path);
    assert_eq!(core_view["data_matches_access_token"], json!(true));
    assert_eq!(
        core_view["token_expires_at_unix"],
        core_view["top_level_expires_at_unix"]
    );
    assert_eq!(
        core_view["access_token_fp"],
        json!(t.access_token.fingerprint())
    );
}

#[test]
fn golden_file_without_expiry_is_read_and_served_as_valid() {
    let sb = Sandbox::new("fmt-noexp");
    let f = Store::parse(&fixture(NO_EXPIRY), &fixture_path(NO_EXPIRY)).unwrap();
    assert_eq!(f.context, "lab");
    assert_eq!(f.expires_at, None);
    assert_eq!(f.expires_at_unix(), None);
    let t = f.token().unwrap();
    assert_eq!(
        (
            t.expires_in,
            t.refresh_token.is_none(),
            t.id_token.is_none()
        ),
        (None, true, true)
    );
    assert_eq!(unix(t.created_at.as_deref().unwrap()), 1_795_897_032.0);

    // QLAM Core treats a token without expiry as valid; so does ensure, without the network.
    let session = {
        let ctx = sb.ctx(&[
            ("QLAM_CONTEXT", "lab"),
            ("QLAM_AUTH_BASE_URL", "http://127.0.0.1:9"),
            ("QLAM_CLIENT_ID", "c"),
        ]);
        let settings = qlam_auth::config::load(&ctx, &Default::default()).unwrap();
        qlam_auth::session::Session::new(ctx, settings)
    };
    place(&session.store, &fixture(NO_EXPIRY));
    let got = session.ensure(Duration::from_secs(3600), false).unwrap();
    assert_eq!(got.source, Source::Cache);
    assert_same_secret(
        &got.file.token().unwrap().access_token,
        &Secret::new("at_fixture_static"),
    );
}

#[test]
fn a_qlam_core_login_is_served_from_the_store_without_the_network() {
    let sb = Sandbox::new("fmt-serve");
    let mut ctx = sb.ctx(&[
        ("QLAM_AUTH_BASE_URL", "http://127.0.0.1:9"),
        ("QLAM_CLIENT_ID", "c"),
        ("QLAM_REFRESH_DEADLINE", "1s"),
    ]);
    ctx.clock_offset_secs = offset_to(FIXTURE_CREATED + 3600.0);
    let settings = qlam_auth::config::load(&ctx, &Default::default()).unwrap();
    let session = qlam_auth::session::Session::new(ctx.clone(), settings.clone());
    assert_eq!(
        session.store.file.file_name().unwrap().to_str().unwrap(),
        store::file_name("oauth_default_qlam")
    );
    place(&session.store, &fixture(DEVICE_LOGIN));

    let got = session.ensure(Duration::from_secs(300), false).unwrap();
    assert_eq!(got.source, Source::Cache);
    assert_same_secret(
        &got.file.token().unwrap().access_token,
        &Secret::new("at_fixture_4f1c2e"),
    );
    let status = session.status().unwrap();
    assert!(status.access_token_valid && status.usable && status.has_refresh_token);
    assert_eq!(status.subject.as_deref(), Some("auth0|fixture-user"));
    assert_eq!(status.email.as_deref(), Some("fixture@example.org"));

    // Near expiry the refresh fails (nothing listens on port 9): the token is still valid,
    // so it is served with a warning, and the file is left as QLAM Core wrote its tokens.
    ctx.clock_offset_secs = offset_to(FIXTURE_CREATED + 86_400.0 - 100.0);
    let session = qlam_auth::session::Session::new(ctx, settings);
    let got = session.ensure(Duration::from_secs(300), false).unwrap();
    assert_eq!(got.source, Source::Stale);
    assert!(got.warning.is_some());
    let after = session.store.read().unwrap().unwrap();
    assert_eq!(
        access_fp(&after),
        Secret::new("at_fixture_4f1c2e").fingerprint()
    );
    assert_eq!(
        refresh_fp(&after),
        Secret::new("rt_fixture_9a7d31").fingerprint()
    );
}

// ---------------------------------------------------------------------------------------------
// What qlam-hpc writes

#[test]
fn a_written_file_has_exactly_qlam_core_keys_and_expiry() {
    let sb = Sandbox::new("fmt-write");
    let store = store_in(&sb, "default", "qlam");
    let created = 1_800_000_042.75;
    let now = 1_800_000_050.5;
    let file = StoreFile::from_tokens(
        "default",
        &tokens("at_written", Some("rt_written"), Some(3600)),
        created,
        now,
        None,
    );
    store.write(&file).unwrap();
    let text = fs::read_to_string(&store.file).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();

    assert_eq!(
        top_level_keys_in_order(&text),
        [
            "version",
            "plugin",
            "context",
            "created_at",
            "updated_at",
            "expires_at",
            "data",
            "extra"
        ],
        "QLAM Core's keys, in its order"
    );
    assert_eq!(v["version"], json!(1));
    assert_eq!(v["plugin"], json!("oauth"));
    assert_eq!(v["context"], json!("default"));
    let token_keys: Vec<&String> = v["extra"]["token_data"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let mut want = [
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "id_token",
        "scope",
        "created_at",
    ];
    want.sort_unstable();
    assert_eq!(token_keys, want, "exactly QLAM Core's TokenData fields");
    let mut extra_keys: Vec<&String> = v["extra"].as_object().unwrap().keys().collect();
    extra_keys.sort();
    assert_eq!(extra_keys, ["qlam_hpc", "token_data"]);

    let data = base64::engine::general_purpose::STANDARD
        .decode(v["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        data, br#"{"token": "at_written"}"#,
        "json.dumps of {{\"token\": ...}}"
    );

    // Timestamps: ISO 8601 with a zone; token created_at is when the request was sent.
    let token_created = v["extra"]["token_data"]["created_at"].as_str().unwrap();
    assert!(
        token_created.contains('T') && token_created.ends_with("+00:00"),
        "{token_created}"
    );
    assert!((unix(token_created) - created).abs() < 1e-3);
    assert!((unix(v["created_at"].as_str().unwrap()) - now).abs() < 1e-3);
    assert!((unix(v["updated_at"].as_str().unwrap()) - now).abs() < 1e-3);
    // expires_at = created_at truncated to the minute + expires_in.
    let minute = 1_800_000_042_i64 - 1_800_000_042 % 60;
    let expires = parse_time(v["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.timestamp(), minute + 3600);
    assert_eq!(expires.timestamp_subsec_nanos(), 0);

    let core_view = qlam_core_reads(&store.file);
    assert_eq!(core_view["data_matches_access_token"], json!(true));
    assert_eq!(
        core_view["token_expires_at_unix"],
        json!((minute + 3600) as f64)
    );
    assert_eq!(
        core_view["top_level_expires_at_unix"],
        json!((minute + 3600) as f64)
    );
    assert_eq!(
        core_view["access_token_fp"],
        json!(Secret::new("at_written").fingerprint())
    );
    assert_eq!(core_view["extra_keys"], json!(["qlam_hpc", "token_data"]));

    let back = store.read().unwrap().unwrap();
    assert_eq!(back.generation(), 1);
    assert!((back.expires_at_unix().unwrap() - (created + 3600.0)).abs() < 1e-3);
}

#[test]
fn a_token_without_refresh_token_or_expiry_still_writes_all_seven_fields() {
    let sb = Sandbox::new("fmt-write-min");
    let store = store_in(&sb, "default", "qlam");
    let file = StoreFile::from_tokens("default", &tokens("at_min", None, None), 1e9, 1e9, None);
    store.write(&file).unwrap();
    let v = raw_json(&store.file);
    let td = v["extra"]["token_data"].as_object().unwrap();
    assert_eq!(td.len(), 7);
    for k in ["expires_in", "refresh_token", "id_token", "scope"] {
        assert_eq!(td[k], Value::Null, "{k}");
    }
    assert_eq!(v["expires_at"], Value::Null);
    let core_view = qlam_core_reads(&store.file);
    assert_eq!(core_view["token_expires_at_unix"], Value::Null);
}

#[test]
fn unknown_extra_keys_and_qlam_hpc_keys_survive_a_rewrite() {
    let sb = Sandbox::new("fmt-foreign");
    let store = store_in(&sb, "default", "qlam");
    let mut doc: Value = serde_json::from_slice(&fixture(DEVICE_LOGIN)).unwrap();
    doc["extra"]["bloqade"] = json!({"profile": "lab", "n": [1, 2, 3]});
    doc["extra"]["note"] = json!("written by another tool");
    doc["extra"]["qlam_hpc"] = json!({"generation": 41, "future_field": {"x": true}});
    place(
        &store,
        serde_json::to_string_pretty(&doc).unwrap().as_bytes(),
    );

    let prev = store.read().unwrap().unwrap();
    assert_eq!(prev.generation(), 41);
    let next = StoreFile::from_tokens(
        "default",
        &tokens("at_next", Some("rt_next"), Some(600)),
        now_unix(),
        now_unix(),
        Some(&prev),
    );
    store.write(&next).unwrap();
    let v = raw_json(&store.file);
    assert_eq!(v["extra"]["bloqade"], doc["extra"]["bloqade"]);
    assert_eq!(v["extra"]["note"], doc["extra"]["note"]);
    assert_eq!(v["extra"]["qlam_hpc"]["future_field"], json!({"x": true}));
    assert_eq!(v["extra"]["qlam_hpc"]["generation"], json!(42));
    assert_eq!(
        v["created_at"], doc["created_at"],
        "the file's creation time is kept"
    );
    assert_same_secret(
        &store.read().unwrap().unwrap().token().unwrap().access_token,
        &Secret::new("at_next"),
    );
}

#[test]
fn qlam_hpc_metadata_round_trips() {
    let sb = Sandbox::new("fmt-meta");
    let store = store_in(&sb, "lab", "m2m");
    let mut file = StoreFile::from_tokens(
        "lab",
        &tokens("at_m", Some("rt_m"), Some(60)),
        1e9,
        1e9,
        None,
    );
    let by = RefreshedBy {
        host: "node042".into(),
        pid: 4242,
        job_id: Some("123_7".into()),
    };
    let err = LastError {
        at: iso_unix(1e9 + 5.0),
        at_unix: 1e9 + 5.0,
        kind: "network".into(),
        message: "cannot reach the IdP".into(),
        refresh_token_fp: Some(Secret::new("rt_m").fingerprint()),
        by: Some(by.clone()),
    };
    {
        let meta = file.meta_mut();
        meta.generation = 7;
        meta.login_at = Some(iso_unix(1e9 - 100.0));
        meta.refreshed_at = Some(iso_unix(1e9));
        meta.refreshed_by = Some(by.clone());
        meta.grant_type = Some("refresh_token".into());
        meta.last_error = Some(err.clone());
        meta.other.insert("m2m_mints".into(), json!({"2026-11": 3}));
    }
    store.write(&file).unwrap();
    let back = store.read().unwrap().unwrap();
    let meta = back.meta().unwrap();
    assert_eq!(meta.generation, 7);
    assert_eq!(meta.login_at, Some(iso_unix(1e9 - 100.0)));
    assert_eq!(meta.refreshed_at, Some(iso_unix(1e9)));
    assert_eq!(meta.refreshed_by.as_ref(), Some(&by));
    assert_eq!(meta.grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(meta.last_error.as_ref(), Some(&err));
    assert_eq!(meta.other.get("m2m_mints"), Some(&json!({"2026-11": 3})));
    assert_eq!(back.context, "lab");
    // A rewrite bumps only the generation.
    let next = StoreFile::from_tokens(
        "lab",
        &tokens("at_n", None, Some(60)),
        1e9,
        1e9,
        Some(&back),
    );
    assert_eq!(next.generation(), 8);
    assert_eq!(next.meta().unwrap().refreshed_by.as_ref(), Some(&by));
    assert_same_secret(
        next.token().unwrap().refresh_token.as_ref().unwrap(),
        &Secret::new("rt_m"),
    );
}

#[test]
fn modes_are_0600_and_0700_and_writes_leave_no_temp_files() {
    let sb = Sandbox::new("fmt-modes");
    let store = store_in(&sb, "default", "qlam");
    assert!(!store.dir.exists());
    for i in 0..5 {
        let f = StoreFile::from_tokens(
            "default",
            &tokens(&format!("at_{i}"), Some("rt"), Some(60)),
            1e9,
            1e9,
            None,
        );
        store.write(&f).unwrap();
        assert_eq!(mode(&store.file), 0o600);
    }
    assert_eq!(mode(&store.dir), 0o700);
    assert_eq!(temp_files(&store.dir), Vec::<String>::new());
    let names: Vec<String> = fs::read_dir(&store.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [store.file.file_name().unwrap().to_str().unwrap()]);

    // A file or directory others can read is refused with the chmod that fixes it.
    fs::set_permissions(&store.file, fs::Permissions::from_mode(0o644)).unwrap();
    let err = store.read().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.hint().unwrap().contains("chmod 600"), "{err:?}");
    fs::set_permissions(&store.file, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&store.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let err = store.read().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.hint().unwrap().contains("chmod 700"), "{err:?}");
}

#[test]
fn old_temp_files_are_swept_and_fresh_ones_kept() {
    let sb = Sandbox::new("fmt-sweep");
    let store = store_in(&sb, "default", "qlam");
    store.ensure_dir().unwrap();
    let name = store
        .file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let old = store.dir.join(format!(".{name}.tmp.99999.deadbeef"));
    let fresh = store.dir.join(format!(".{name}.tmp.99998.cafef00d"));
    for p in [&old, &fresh] {
        fs::write(p, b"partial").unwrap();
    }
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let f = StoreFile::from_tokens("default", &tokens("at", None, Some(60)), 1e9, 1e9, None);
    store.write(&f).unwrap();
    assert!(
        !old.exists(),
        "a crashed writer's temp file is removed after an hour"
    );
    assert!(
        fresh.exists(),
        "a temp file of a writer at work is left alone"
    );
}

#[test]
fn corrupt_or_foreign_files_are_store_errors_and_are_kept() {
    let good: Value = serde_json::from_slice(&fixture(DEVICE_LOGIN)).unwrap();
    let mut unknown_top = good.clone();
    unknown_top["qlam_hpc"] = json!({});
    let mut v2 = good.clone();
    v2["version"] = json!(2);
    let mut extra_token_key = good.clone();
    extra_token_key["extra"]["token_data"]["generation"] = json!(1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", fixture(DEVICE_LOGIN)[..200].to_vec()),
        (
            "unknown top-level key",
            unknown_top.to_string().into_bytes(),
        ),
        ("version 2", v2.to_string().into_bytes()),
        (
            "unknown token_data key",
            extra_token_key.to_string().into_bytes(),
        ),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        let sb = Sandbox::new("fmt-corrupt");
        let store = store_in(&sb, "default", "qlam");
        place(&store, &bytes);
        let err = store.read().expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Store, "{what}: {err:?}");
        assert!(
            err.message().contains(&store.file.display().to_string()),
            "{what}: {err:?}"
        );
        assert_eq!(
            fs::read(&store.file).unwrap(),
            bytes,
            "{what}: the file is kept as it was"
        );
    }
}

#[test]
fn a_login_replaces_a_corrupt_file() {
    let w = World::new("fmt-relogin", 3600);
    let s = w.session(0);
    place(&s.store, b"{ garbage");
    assert_eq!(
        s.ensure(Duration::from_secs(60), false).unwrap_err().kind(),
        ErrorKind::Store
    );
    let written = w.login();
    let back = s.store.read().unwrap().unwrap();
    assert_eq!(access_fp(&back), access_fp(&written));
    assert_eq!(back.generation(), 1);
}

#[test]
fn a_qlam_core_written_login_is_refreshed_and_stays_qlam_core_readable() {
    let w = World::new("fmt-interop", 3600);
    let (t, _) = w.tokens();
    // The golden file with this IdP's tokens in it, still byte for byte QLAM Core's layout.
    let data = base64::engine::general_purpose::STANDARD
        .encode(format!("{{\"token\": \"{}\"}}", t.access_token.expose()));
    let text = String::from_utf8(fixture(DEVICE_LOGIN))
        .unwrap()
        .replace("eyJ0b2tlbiI6ICJhdF9maXh0dXJlXzRmMWMyZSJ9", &data)
        .replace("at_fixture_4f1c2e", t.access_token.expose())
        .replace(
            "rt_fixture_9a7d31",
            t.refresh_token.as_ref().unwrap().expose(),
        )
        // Another tool's key beside token_data.
        .replace(
            "\"extra\": {\n",
            "\"extra\": {\n    \"bloqade\": {\"profile\": \"lab\"},\n",
        );
    // Near the end of the fixture's 24 h: due for a refresh, still valid.
    let offset = offset_to(FIXTURE_CREATED + 86_400.0 - 120.0);
    let s = w.session(offset);
    place(&s.store, text.as_bytes());

    let got = s.ensure(Duration::from_secs(300), false).unwrap();
    assert_eq!(got.source, Source::Renewed);
    assert_eq!(w.idp.counters().refresh_ok, 1);
    let v = raw_json(&s.store.file);
    assert_eq!(
        v["created_at"],
        json!("2026-11-28 20:17:12.523114+00:00"),
        "kept verbatim"
    );
    assert_eq!(v["extra"]["qlam_hpc"]["generation"], json!(1));
    assert_eq!(v["extra"]["qlam_hpc"]["grant_type"], json!("refresh_token"));
    assert_eq!(
        v["extra"]["bloqade"],
        json!({"profile": "lab"}),
        "foreign keys survive a refresh"
    );
    let after = s.store.read().unwrap().unwrap();
    assert_ne!(
        refresh_fp(&after),
        t.refresh_token.as_ref().unwrap().fingerprint(),
        "rotated"
    );
    let core_view = qlam_core_reads(&s.store.file);
    assert_eq!(core_view["access_token_fp"], json!(access_fp(&after)));
    assert_eq!(core_view["refresh_token_fp"], json!(refresh_fp(&after)));
    assert_eq!(
        core_view["extra_keys"],
        json!(["bloqade", "qlam_hpc", "token_data"])
    );
    assert_eq!(temp_files(&s.store.dir), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// File names

/// QLAM Core's `_get_cache_file_path` name for each key, computed by Python itself.
fn python_file_names(keys: &[String]) -> Vec<String> {
    let script = r#"
import hashlib, json, re, sys
out = []
for key in json.load(sys.stdin):
    sanitized = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._") or "default"
    out.append(f"cache_{sanitized[:64]}_{hashlib.sha256(key.encode('utf-8')).hexdigest()}.json")
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to compute QLAM Core's file names");
    serde_json::to_writer(child.stdin.take().unwrap(), keys).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn file_names_match_qlam_core_for_awkward_keys() {
    let keys: Vec<String> = vec![
        store::cache_key("default", "qlam"),
        store::cache_key("dev/us main", "qlam"),
        store::cache_key(" dev / us ", "qlam"),
        store::cache_key("ctx.v2", "qlam-prod"),
        store::cache_key("ünïcødé", "😀"),
        store::cache_key("tab\tnew\nline", "p"),
        store::cache_key(&"a".repeat(100), "qlam"),
        store::cache_key(&"a".repeat(57), "/b/c"),
        format!("oauth_{}", "/".repeat(70)),
        ".hidden_ctx".into(),
        "..//..".into(),
        "___".into(),
        "".into(),
        "-leading-dash.".into(),
        format!("{}x", ".".repeat(80)),
        format!("{}_{}", "b".repeat(63), "c".repeat(10)),
    ];
    let want = python_file_names(&keys);
    for (key, want) in keys.iter().zip(&want) {
        assert_eq!(&store::file_name(key), want, "key {key:?}");
    }
    // The prefix really is cut to 64 characters.
    assert!(want[6].starts_with(&format!("cache_oauth_{}_", "a".repeat(58))));
    assert!(want[12].starts_with("cache_default_"));

    // A Store puts its file there, with the lock file beside it.
    let sb = Sandbox::new("fmt-names");
    let st = store_in(&sb, "dev/us main", "qlam");
    assert_eq!(st.file, sb.credentials_dir().join(&want[1]));
    assert_eq!(
        st.lock_file,
        sb.credentials_dir().join(format!("{}.lock", want[1]))
    );
}
