//! Discovery (DESIGN §3): the OIDC document, the RFC 8414 fallback, and the cache beside the
//! store that keeps the hot path off the network, including a stale cache when the IdP's
//! discovery is down.

use std::time::Duration;

use qlam_auth::config::{HttpSettings, Verify};
use qlam_auth::discovery::{self, Discovery};
use qlam_auth::http::HttpClient;
use qlam_auth::store::single_flight::Source;
use qlam_auth::{Ctx, ErrorKind};
use qlam_test_idp::{DiscoveryMode, Endpoint, Fault, Idp, IdpConfig};
use serde_json::json;

use crate::support::{World, mode, now_unix, raw_json};

const MIN_TTL: Duration = Duration::from_secs(300);
const DAY: i64 = 86_400;

fn http() -> HttpClient {
    let settings = HttpSettings {
        verify: Verify::Off,
        request_timeout: Duration::from_secs(10),
        follow_redirects: false,
    };
    HttpClient::new(
        &Ctx::with_vars(Vec::<(String, String)>::new()),
        &settings,
        "http://127.0.0.1",
    )
    .unwrap()
}

fn idp(mode: DiscoveryMode) -> Idp {
    Idp::start(IdpConfig {
        discovery: mode,
        ..IdpConfig::default()
    })
    .unwrap()
}

#[track_caller]
fn assert_endpoints_of(d: &Discovery, idp: &Idp) {
    let base = idp.base_url();
    assert_eq!(d.issuer, idp.issuer());
    assert_eq!(d.token_endpoint, format!("{base}/oauth/token"));
    assert_eq!(
        d.device_authorization_endpoint.as_deref(),
        Some(format!("{base}/oauth/device/code").as_str())
    );
}

/// Log in, then refresh from two separate sessions; returns the discovery requests the IdP saw
/// after the first and after the second refresh.
fn two_refreshes(w: &World) -> (u64, u64) {
    w.login();
    assert_eq!(w.idp.counters().discovery, 0);
    let first = w.session(3400).ensure(MIN_TTL, false).unwrap();
    assert_eq!(first.source, Source::Renewed);
    let after_first = w.idp.counters().discovery;
    let second = w.session(7000).ensure(MIN_TTL, false).unwrap();
    assert_eq!(second.source, Source::Renewed);
    assert_eq!(w.idp.counters().refresh_ok, 2);
    (after_first, w.idp.counters().discovery)
}

#[test]
fn the_oidc_document_is_used_and_cached_beside_the_store() {
    let w = World::new("disc-oidc", 3600);
    let (first, second) = two_refreshes(&w);
    assert_eq!(first, 1, "one request for the OIDC document");
    assert_eq!(second, 1, "the second session used the cache");

    let s = w.session(0);
    let cache = discovery::cache_path(&s.store.dir, &w.idp.base_url());
    assert_eq!(cache.parent().unwrap(), w.sb.credentials_dir());
    assert_eq!(mode(&cache), 0o600);
    let v = raw_json(&cache);
    assert_eq!(v["base_url"], json!(w.idp.base_url()));
    let d: Discovery = serde_json::from_value(v["discovery"].clone()).unwrap();
    assert_endpoints_of(&d, &w.idp);
}

#[test]
fn an_oauth_only_idp_is_found_through_rfc_8414() {
    let w = World::with_idp(
        "disc-8414",
        IdpConfig {
            discovery: DiscoveryMode::OAuthOnly,
            auto_approve: true,
            ..IdpConfig::default()
        },
    );
    let (first, second) = two_refreshes(&w);
    assert_eq!(first, 2, "404 for the OIDC document, then the RFC 8414 one");
    assert_eq!(second, 2, "then the cache");
    let cache = discovery::cache_path(&w.sb.credentials_dir(), &w.idp.base_url());
    let d: Discovery = serde_json::from_value(raw_json(&cache)["discovery"].clone()).unwrap();
    assert_endpoints_of(&d, &w.idp);

    let direct = discovery::fetch(&http(), &w.idp.base_url()).unwrap();
    assert_eq!(direct, d);
}

#[test]
fn a_fresh_cache_needs_no_idp_and_a_stale_one_serves_while_the_idp_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let idp = idp(DiscoveryMode::OpenId);
    let base = idp.base_url();
    let now = now_unix();
    let fetched = discovery::discover(
        &http(),
        &base,
        Some(dir.path()),
        now,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_endpoints_of(&fetched, &idp);
    assert_eq!(idp.counters().discovery, 1);
    let cached = discovery::discover(
        &http(),
        &base,
        Some(dir.path()),
        now + 3600.0,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(cached, fetched);
    assert_eq!(idp.counters().discovery, 1, "fresh cache: no request");

    // A day later the cache is stale; the IdP answers, so it is fetched and rewritten.
    let later = now + (DAY + 60) as f64;
    discovery::discover(
        &http(),
        &base,
        Some(dir.path()),
        later,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(idp.counters().discovery, 2);
    let fetched_at = raw_json(&discovery::cache_path(dir.path(), &base))["fetched_at"]
        .as_f64()
        .unwrap();
    assert!((fetched_at - later).abs() < 1e-3, "{fetched_at} != {later}");

    // The IdP goes away: within the day the cache answers; beyond it, the stale cache does.
    drop(idp);
    let d = discovery::discover(
        &http(),
        &base,
        Some(dir.path()),
        later + 60.0,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(d, fetched);
    let d = discovery::discover(
        &http(),
        &base,
        Some(dir.path()),
        later + (3 * DAY) as f64,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(d, fetched, "a stale cache beats no answer");
    let err = discovery::discover(
        &http(),
        &base,
        None,
        now,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network, "{err:?}");
    assert!(err.message().contains(&base), "{err:?}");
}

#[test]
fn a_session_refreshes_with_a_stale_cache_when_discovery_fails() {
    let w = World::new("disc-stale", 3600);
    w.login();
    assert_eq!(
        w.session(3400).ensure(MIN_TTL, false).unwrap().source,
        Source::Renewed
    );
    assert_eq!(w.idp.counters().discovery, 1);
    w.idp
        .push_fault(Endpoint::Discovery, Fault::Status(503), None);
    // Two days on: the cache is stale and the token expired; discovery fails, the stale
    // endpoints still work.
    let got = w.session(3400 + 2 * DAY).ensure(MIN_TTL, false).unwrap();
    assert_eq!(got.source, Source::Renewed);
    let c = w.idp.counters();
    assert!(c.discovery > 1, "the IdP was asked again first");
    assert_eq!(c.refresh_ok, 2);
}

#[test]
fn caches_are_per_base_url_and_a_broken_one_is_refetched() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (idp(DiscoveryMode::OpenId), idp(DiscoveryMode::OAuthOnly));
    let now = now_unix();
    let da = discovery::discover(
        &http(),
        &a.base_url(),
        Some(dir.path()),
        now,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap();
    let db = discovery::discover(
        &http(),
        &b.base_url(),
        Some(dir.path()),
        now,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_endpoints_of(&da, &a);
    assert_endpoints_of(&db, &b);
    assert_ne!(
        discovery::cache_path(dir.path(), &a.base_url()),
        discovery::cache_path(dir.path(), &b.base_url())
    );
    assert_eq!((a.counters().discovery, b.counters().discovery), (1, 2));

    // A's document copied under B's name is not taken for B's.
    let (pa, pb) = (
        discovery::cache_path(dir.path(), &a.base_url()),
        discovery::cache_path(dir.path(), &b.base_url()),
    );
    std::fs::copy(&pa, &pb).unwrap();
    let again = discovery::discover(
        &http(),
        &b.base_url(),
        Some(dir.path()),
        now + 1.0,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(again, db);
    assert_eq!(b.counters().discovery, 4);

    // Garbage in the cache: fetched again and the cache repaired.
    std::fs::write(&pa, b"{ not json").unwrap();
    let again = discovery::discover(
        &http(),
        &a.base_url(),
        Some(dir.path()),
        now + 2.0,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(again, da);
    assert_eq!(a.counters().discovery, 2);
    assert_eq!(raw_json(&pa)["base_url"], json!(a.base_url()));
}

#[test]
fn the_refresh_deadline_bounds_discovery_too() {
    let w = World::new("disc-deadline", 3600);
    // Requests time out after 1.5 s (qsh http_client); discovery hangs for 30 s.
    w.sb.write_qsh(&json!({
        "current_context": "default",
        "contexts": [{
            "name": "default",
            "qpu": "qpu-foo",
            "defaults": {"auth_provider": "qlam", "http_client": {"request_timeout_seconds": 1.5}},
            "auth_providers": [{
                "name": "qlam",
                "provider": "oauth",
                "auth_base_url": w.idp.base_url(),
                "client_id": qlam_test_idp::DEFAULT_CLIENT_ID,
            }],
        }],
    }));
    w.login();
    w.idp.push_fault(
        Endpoint::Discovery,
        Fault::Latency(Duration::from_secs(30)),
        None,
    );
    let s = w.session_with(4000, &[("QLAM_REFRESH_DEADLINE", "2s")]);
    let started = std::time::Instant::now();
    let err = s.ensure(MIN_TTL, false).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Network, "{err:?}");
    // DESIGN §3: a deadline for the whole refresh, retries included (plus at most the
    // request in flight when it passes).
    assert!(took < Duration::from_secs(4), "the refresh took {took:?}");
}
