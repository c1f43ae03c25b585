//! Blocking HTTP to the IdP (ureq + rustls; no async runtime). Honours the proxy and CA
//! settings of the context, classifies failures (transport, 429, 5xx, malformed, OAuth
//! error) and retries transient ones with exponential back-off, jitter and `Retry-After`
//! inside a deadline. Nothing here logs request or response bodies.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::config::{HttpSettings, Verify};
use crate::context::Ctx;
use crate::env_vars::EnvVars;
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;

/// Why a request failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Connection refused, DNS, TLS, timeout, connection dropped.
    Transport(String),
    /// 429, with the `Retry-After` it gave.
    RateLimited(Option<Duration>),
    /// 5xx.
    Server(u16),
    /// A success status whose body is not the JSON expected.
    Malformed(String),
    /// An RFC 6749 error response.
    OAuth {
        /// HTTP status.
        status: u16,
        /// `error`
        error: String,
        /// `error_description`
        description: Option<String>,
    },
    /// Another 4xx without an OAuth error body.
    Status(u16),
}

impl Failure {
    /// Worth retrying: network trouble, rate limiting, server errors, garbage bodies.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Failure::Transport(_)
                | Failure::RateLimited(_)
                | Failure::Server(_)
                | Failure::Malformed(_)
        )
    }

    /// The OAuth `error` code, if this is an OAuth error.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            Failure::OAuth { error, .. } => Some(error),
            _ => None,
        }
    }

    /// A short description, safe to show and to store.
    pub fn describe(&self) -> String {
        match self {
            Failure::Transport(m) => format!("cannot reach the IdP: {m}"),
            Failure::RateLimited(_) => "the IdP is rate limiting requests (HTTP 429)".into(),
            Failure::Server(s) => format!("the IdP answered with a server error (HTTP {s})"),
            Failure::Malformed(m) => format!("the IdP sent a malformed response: {m}"),
            Failure::OAuth {
                error,
                description,
                status,
            } => match description {
                Some(d) if !d.is_empty() => {
                    format!("the IdP refused the request: {error} ({d}), HTTP {status}")
                }
                _ => format!("the IdP refused the request: {error} (HTTP {status})"),
            },
            Failure::Status(s) => format!("the IdP answered HTTP {s}"),
        }
    }

    /// The error kind this failure maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Failure::Transport(_) => ErrorKind::Network,
            Failure::RateLimited(_) | Failure::Server(_) | Failure::Malformed(_) => {
                ErrorKind::IdpServer
            }
            Failure::OAuth { error, .. } => match error.as_str() {
                "invalid_client"
                | "unauthorized_client"
                | "invalid_scope"
                | "unsupported_grant_type" => ErrorKind::Config,
                _ => ErrorKind::Auth,
            },
            Failure::Status(_) => ErrorKind::IdpServer,
        }
    }

    /// Turn into a user-facing error about `what` (e.g. "refreshing the token").
    pub fn into_error(self, what: &str) -> Error {
        let kind = self.kind();
        let hint = match kind {
            ErrorKind::Network => {
                "check the network route to the IdP, the proxy (HTTPS_PROXY, NO_PROXY) and the CA settings (SSL_CERT_FILE, verify_ssl)"
            }
            ErrorKind::IdpServer => "the IdP is having trouble; try again later",
            ErrorKind::Config => {
                "check client_id, client secret/key, scope and grant_type in the configuration"
            }
            _ => "run `qlam-hpc login` on a login node",
        };
        Error::new(kind, format!("{what}: {}", self.describe())).with_hint(hint)
    }
}

/// A configured HTTP client.
pub struct HttpClient {
    agent: ureq::Agent,
}

fn load_pem_certs(path: &Path) -> Result<Vec<Certificate<'static>>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::config(format!("cannot read CA bundle {}: {e}", path.display())))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        if let Ok(PemItem::Certificate(c)) = item {
            certs.push(c.to_owned());
        }
    }
    if certs.is_empty() {
        return Err(Error::config(format!(
            "CA bundle {} holds no PEM certificates",
            path.display()
        )));
    }
    Ok(certs)
}

fn root_certs(ctx: &Ctx, verify: &Verify) -> Result<Option<RootCerts>> {
    let certs = match verify {
        Verify::Off => return Ok(None),
        Verify::CaBundle(p) => load_pem_certs(p)?,
        Verify::Default => {
            if let Some(f) = ctx.var(EnvVars::SSL_CERT_FILE) {
                load_pem_certs(Path::new(f))?
            } else if let Some(d) = ctx.var(EnvVars::SSL_CERT_DIR) {
                let mut all = Vec::new();
                for dir in d.split(':') {
                    if let Ok(entries) = std::fs::read_dir(dir) {
                        for e in entries.flatten() {
                            if let Ok(mut c) = load_pem_certs(&e.path()) {
                                all.append(&mut c);
                            }
                        }
                    }
                }
                all
            } else {
                let system = [
                    "/etc/ssl/certs/ca-certificates.crt",
                    "/etc/pki/tls/certs/ca-bundle.crt",
                    "/etc/ssl/ca-bundle.pem",
                ]
                .iter()
                .find(|p| Path::new(p).exists());
                match system {
                    Some(p) => load_pem_certs(Path::new(p))?,
                    None => return Ok(Some(RootCerts::WebPki)),
                }
            }
        }
    };
    Ok(Some(RootCerts::Specific(Arc::new(certs))))
}

fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.trim_start_matches("*.").trim_start_matches('.');
            let entry = entry.split(':').next().unwrap_or(entry);
            host == entry || host.ends_with(&format!(".{entry}"))
        })
}

/// The proxy to use for `target_url`, from the context's environment.
pub fn proxy_for(ctx: &Ctx, target_url: &str) -> Option<String> {
    let url = url::Url::parse(target_url).ok()?;
    let host = url.host_str()?.to_string();
    let no_proxy = ctx
        .var(EnvVars::NO_PROXY)
        .or_else(|| ctx.var(EnvVars::NO_PROXY_LOWER))
        .unwrap_or("");
    if no_proxy_matches(no_proxy, &host) {
        return None;
    }
    let vars = if url.scheme() == "https" {
        [EnvVars::HTTPS_PROXY, EnvVars::HTTPS_PROXY_LOWER]
    } else {
        [EnvVars::HTTP_PROXY, EnvVars::HTTP_PROXY_LOWER]
    };
    vars.iter().find_map(|v| ctx.var(v)).map(str::to_string)
}

impl HttpClient {
    /// Build a client for requests to `base_url`.
    pub fn new(ctx: &Ctx, settings: &HttpSettings, base_url: &str) -> Result<HttpClient> {
        let mut tls = TlsConfig::builder();
        match root_certs(ctx, &settings.verify)? {
            Some(roots) => tls = tls.root_certs(roots),
            None => tls = tls.disable_verification(true),
        }
        let proxy = match proxy_for(ctx, base_url) {
            Some(p) => Some(
                ureq::Proxy::new(&p)
                    .map_err(|e| Error::config(format!("invalid proxy setting {p:?}: {e}")))?,
            ),
            None => None,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(settings.request_timeout))
            .max_redirects(if settings.follow_redirects { 5 } else { 0 })
            .user_agent(concat!("qlam-hpc/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .proxy(proxy)
            .build()
            .into();
        Ok(HttpClient { agent })
    }

    /// GET a JSON document.
    pub fn get_json(&self, url: &str) -> std::result::Result<Value, Failure> {
        let resp = self
            .agent
            .get(url)
            .header("Accept", "application/json")
            .call()
            .map_err(transport)?;
        read_json(resp)
    }

    /// POST a form; `basic` adds HTTP Basic client authentication (RFC 6749 §2.3.1).
    pub fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &Secret)>,
    ) -> std::result::Result<Value, Failure> {
        let mut req = self.agent.post(url).header("Accept", "application/json");
        if let Some((id, secret)) = basic {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let raw = format!("{}:{}", enc(id), enc(secret.expose()));
            let header = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            );
            req = req.header("Authorization", header);
        }
        let resp = req.send_form(form.iter().copied()).map_err(transport)?;
        read_json(resp)
    }

    /// POST a form and return only the status (for endpoints such as RFC 7009 revocation
    /// that answer with an empty body). 429 and 5xx are failures.
    pub fn post_form_status(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> std::result::Result<u16, Failure> {
        let mut resp = self
            .agent
            .post(url)
            .send_form(form.iter().copied())
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let _ = resp.body_mut().with_config().limit(1 << 16).read_to_vec();
        match status {
            429 => Err(Failure::RateLimited(None)),
            s if s >= 500 => Err(Failure::Server(s)),
            s => Ok(s),
        }
    }

    /// The server's `Date` header on a GET of `url`, for clock-skew checks.
    pub fn server_date(&self, url: &str) -> std::result::Result<Option<String>, Failure> {
        let resp = self.agent.get(url).call().map_err(transport)?;
        Ok(resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }
}

fn transport(e: ureq::Error) -> Failure {
    Failure::Transport(e.to_string())
}

fn read_json(mut resp: ureq::http::Response<ureq::Body>) -> std::result::Result<Value, Failure> {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.body_mut().with_config().limit(1 << 20).read_to_vec();
    if status == 429 {
        return Err(Failure::RateLimited(retry_after));
    }
    if status >= 500 {
        return Err(Failure::Server(status));
    }
    let body = body.map_err(|e| Failure::Transport(format!("reading the response: {e}")))?;
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    if (200..300).contains(&status) {
        return match parsed {
            Some(v @ Value::Object(_)) => Ok(v),
            _ => Err(Failure::Malformed(format!(
                "HTTP {status} with a body that is not a JSON object"
            ))),
        };
    }
    match parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.as_str())
    {
        Some(error) => Err(Failure::OAuth {
            status,
            error: error.to_string(),
            description: parsed
                .as_ref()
                .and_then(|v| v.get("error_description"))
                .and_then(|d| d.as_str())
                .map(|d| d.chars().take(300).collect()),
        }),
        None => Err(Failure::Status(status)),
    }
}

/// How long to wait before retrying after transient failure `f` on attempt `attempt`
/// (1-based): `Retry-After` when the IdP sent one, else exponential back-off (0.5 s
/// doubling, capped at 8 s) with jitter. `None` when the wait would pass `deadline`.
pub fn backoff(f: &Failure, attempt: u32, deadline: Instant) -> Option<Duration> {
    let base = Duration::from_millis(500u64 << (attempt.max(1) - 1).min(4));
    let wait = match f {
        Failure::RateLimited(Some(ra)) => *ra,
        _ => base.mul_f64(0.5 + rand::random::<f64>() * 0.5),
    };
    (Instant::now() + wait < deadline).then_some(wait)
}

/// Run `op` until it succeeds, fails permanently, or `deadline` passes; transient failures
/// are retried after [`backoff`]. Returns the last failure at the deadline.
pub fn with_retries<T>(
    deadline: Instant,
    max_attempts: u32,
    mut op: impl FnMut() -> std::result::Result<T, Failure>,
) -> std::result::Result<T, Failure> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match op() {
            Ok(v) => return Ok(v),
            Err(f) if !f.is_transient() || attempt >= max_attempts => return Err(f),
            Err(f) => match backoff(&f, attempt, deadline) {
                Some(wait) => std::thread::sleep(wait),
                None => return Err(f),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_rules() {
        assert!(no_proxy_matches(
            "localhost,.example.org",
            "idp.example.org"
        ));
        assert!(no_proxy_matches("example.org", "example.org"));
        assert!(no_proxy_matches("*", "anything"));
        assert!(!no_proxy_matches("example.org", "badexample.org"));
        assert!(!no_proxy_matches("", "example.org"));
    }

    #[test]
    fn proxy_from_context() {
        let ctx = Ctx::with_vars([
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "127.0.0.1"),
        ]);
        assert_eq!(
            proxy_for(&ctx, "https://idp.example.org/x").as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(proxy_for(&ctx, "https://127.0.0.1:8443/x"), None);
        assert_eq!(proxy_for(&ctx, "http://idp.example.org/x"), None);
    }

    #[test]
    fn retries_stop_on_permanent_failure() {
        let mut calls = 0;
        let r: std::result::Result<(), Failure> =
            with_retries(Instant::now() + Duration::from_secs(5), 5, || {
                calls += 1;
                Err(Failure::OAuth {
                    status: 400,
                    error: "invalid_grant".into(),
                    description: None,
                })
            });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn retries_transient_until_attempts_run_out() {
        let mut calls = 0;
        let r: std::result::Result<(), Failure> =
            with_retries(Instant::now() + Duration::from_secs(30), 3, || {
                calls += 1;
                Err(Failure::RateLimited(Some(Duration::from_millis(10))))
            });
        assert!(matches!(r, Err(Failure::RateLimited(_))));
        assert_eq!(calls, 3);
    }
}
