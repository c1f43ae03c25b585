//! OIDC discovery (`/.well-known/openid-configuration`) with the RFC 8414 fallback
//! (`/.well-known/oauth-authorization-server`), cached beside the store and keyed by base URL,
//! so only the first network operation of a day pays for it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::http::{Failure, HttpClient};
use crate::secret::Secret;

/// How long a cached discovery document is trusted.
const CACHE_TTL_SECS: f64 = 24.0 * 3600.0;

/// The endpoints qlam-hpc uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Discovery {
    /// The issuer exactly as the IdP reports it (Auth0's ends in `/`).
    pub issuer: String,
    /// Token endpoint.
    pub token_endpoint: String,
    /// RFC 8628 device authorization endpoint.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// Authorization endpoint (browser flow).
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// RFC 7009 revocation endpoint.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// RFC 7662 introspection endpoint.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// Userinfo endpoint.
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// Client authentication methods the token endpoint accepts.
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    base_url: String,
    fetched_at: f64,
    discovery: Discovery,
}

/// The cache file for `base_url` in `dir`.
pub fn cache_path(dir: &Path, base_url: &str) -> PathBuf {
    let fp = Secret::new(base_url).fingerprint();
    dir.join(format!("qlam-hpc-discovery-{fp}.json"))
}

fn read_cache(path: &Path, base_url: &str) -> Option<(f64, Discovery)> {
    let text = std::fs::read_to_string(path).ok()?;
    let entry: CacheEntry = serde_json::from_str(&text).ok()?;
    (entry.base_url == base_url).then_some((entry.fetched_at, entry.discovery))
}

fn parse(value: serde_json::Value, url: &str) -> std::result::Result<Discovery, Failure> {
    serde_json::from_value::<Discovery>(value).map_err(|e| {
        Failure::Malformed(format!(
            "discovery document at {url} is missing required fields: {e}"
        ))
    })
}

/// Fetch discovery for `base_url` without cache: OIDC first, RFC 8414 on 404.
pub fn fetch(http: &HttpClient, base_url: &str) -> std::result::Result<Discovery, Failure> {
    let base = base_url.trim_end_matches('/');
    let oidc = format!("{base}/.well-known/openid-configuration");
    match http.get_json(&oidc) {
        Ok(v) => parse(v, &oidc),
        Err(Failure::Status(403..=405)) | Err(Failure::OAuth { status: 404, .. }) => {
            let rfc8414 = format!("{base}/.well-known/oauth-authorization-server");
            http.get_json(&rfc8414).and_then(|v| parse(v, &rfc8414))
        }
        Err(e) => Err(e),
    }
}

/// Discovery for `base_url`, from the cache in `cache_dir` when fresh (`now` in unix
/// seconds), else fetched and cached; a stale cache is used when the IdP cannot be reached.
pub fn discover(
    http: &HttpClient,
    base_url: &str,
    cache_dir: Option<&Path>,
    now: f64,
    deadline: std::time::Instant,
) -> Result<Discovery> {
    let cache = cache_dir.map(|d| cache_path(d, base_url));
    let cached = cache.as_deref().and_then(|p| read_cache(p, base_url));
    if let Some((at, d)) = &cached
        && now - at < CACHE_TTL_SECS
        && now >= *at
    {
        return Ok(d.clone());
    }
    // Network attempts stop at `deadline` (the caller's whole-operation deadline).
    let deadline = deadline.min(std::time::Instant::now() + std::time::Duration::from_secs(20));
    match crate::http::with_retries(deadline, 3, || fetch(http, base_url)) {
        Ok(d) => {
            if let (Some(path), Some(dir)) = (&cache, cache_dir)
                && dir.is_dir()
            {
                let entry = CacheEntry {
                    base_url: base_url.to_string(),
                    fetched_at: now,
                    discovery: d.clone(),
                };
                if let Ok(text) = serde_json::to_vec_pretty(&entry) {
                    // Best effort: a cache that cannot be written costs one request next time.
                    let _ = crate::store::fsutil::write_atomic(path, &text, 0o600, false);
                }
            }
            Ok(d)
        }
        Err(f) => match cached {
            Some((_, d)) if f.is_transient() => Ok(d),
            _ => Err(f.into_error(&format!("discovering the IdP at {base_url}"))),
        },
    }
}

impl Discovery {
    /// The device endpoint, or a config error saying the IdP has none.
    pub fn device_endpoint(&self) -> Result<&str> {
        self.device_authorization_endpoint.as_deref().ok_or_else(|| {
            Error::config("the IdP does not offer the device authorization grant (no device_authorization_endpoint)")
                .with_hint("use `qlam-hpc login --browser`")
        })
    }
}
