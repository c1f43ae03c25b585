//! RFC 8628 device authorization: ask for a user code, then poll the token endpoint until
//! the user approves, denies or the code expires. `slow_down` adds 5 s to the interval;
//! 429, 5xx and network errors keep polling with back-off and are reported if the code
//! expires meanwhile.

use std::time::{Duration, Instant, SystemTime};

use crate::config::Provider;
use crate::discovery::Discovery;
use crate::error::{Error, Result};
use crate::flows::{TokenResponse, push_audience};
use crate::http::{Failure, HttpClient, with_retries};
use crate::secret::Secret;

/// RFC 8628's grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Interval when the IdP sends none (RFC 8628 §3.2).
pub const DEFAULT_INTERVAL: u64 = 5;

/// What the user needs to approve the login.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// Secret: sent only to the token endpoint.
    pub device_code: Secret,
    /// The code the user types.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: String,
    /// The same with the code filled in (for the QR code).
    pub verification_uri_complete: Option<String>,
    /// Seconds until the codes expire.
    pub expires_in: u64,
    /// Polling interval in seconds.
    pub interval: u64,
}

/// Ask the IdP for a device code.
pub fn start(
    http: &HttpClient,
    disc: &Discovery,
    provider: &Provider,
) -> Result<DeviceAuthorization> {
    let endpoint = disc.device_endpoint()?;
    let scope = provider.user_scope();
    let mut form: Vec<(&str, &str)> = vec![
        ("client_id", provider.client_id.as_str()),
        ("scope", scope.as_str()),
    ];
    push_audience(&mut form, &provider.audience);
    let v = with_retries(Instant::now() + Duration::from_secs(30), 4, || {
        http.post_form(endpoint, &form, None)
    })
    .map_err(|f| f.into_error("starting the device login"))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let n = |k: &str| {
        v.get(k).and_then(|x| {
            x.as_u64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        })
    };
    let bad = |what: &str| {
        Error::new(
            crate::ErrorKind::IdpServer,
            format!("the IdP's device response has no {what}"),
        )
    };
    Ok(DeviceAuthorization {
        device_code: Secret::new(s("device_code").ok_or_else(|| bad("device_code"))?),
        user_code: s("user_code").ok_or_else(|| bad("user_code"))?,
        verification_uri: s("verification_uri")
            .or_else(|| s("verification_url"))
            .ok_or_else(|| bad("verification_uri"))?,
        verification_uri_complete: s("verification_uri_complete"),
        expires_in: n("expires_in").unwrap_or(600),
        interval: n("interval").filter(|i| *i > 0).unwrap_or(DEFAULT_INTERVAL),
    })
}

/// Told about polling progress (for a spinner or countdown).
pub trait PollObserver {
    /// Called before each wait with the time left before the code expires.
    fn waiting(&mut self, _remaining: Duration) {}
    /// Called when a poll failed transiently (the loop goes on).
    fn transient(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl PollObserver for Quiet {}

/// Poll until the login completes. Returns the tokens and the time the successful request
/// was sent (the store's `created_at`, so expiry errs early).
pub fn poll(
    http: &HttpClient,
    disc: &Discovery,
    provider: &Provider,
    auth: &DeviceAuthorization,
    observer: &mut dyn PollObserver,
) -> Result<(TokenResponse, SystemTime)> {
    let started = Instant::now();
    let expires = started + Duration::from_secs(auth.expires_in);
    let mut interval = Duration::from_secs(auth.interval);
    let mut backoff = Duration::ZERO;
    let mut last_transient: Option<String> = None;
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", DEVICE_GRANT),
        ("device_code", auth.device_code.expose()),
        ("client_id", provider.client_id.as_str()),
    ];
    if let Some(t) = &provider.tenant {
        form.push(("organization", t.as_str()));
    }
    loop {
        let wait = interval + backoff;
        let now = Instant::now();
        if now + wait >= expires {
            let mut msg = "the device code expired before the login was approved".to_string();
            if let Some(t) = &last_transient {
                msg.push_str(&format!(" (last problem while polling: {t})"));
            }
            return Err(Error::auth(msg)
                .with_hint("run `qlam-hpc login` again and approve it within the time shown"));
        }
        observer.waiting(expires - now);
        sleep_observed(wait, expires, observer);
        let sent_at = SystemTime::now();
        match http.post_form(&disc.token_endpoint, &form, None) {
            Ok(v) => {
                let tokens = TokenResponse::from_json(&v)
                    .map_err(|f| f.into_error("finishing the device login"))?;
                return Ok((tokens, sent_at));
            }
            Err(Failure::OAuth { error, .. }) if error == "authorization_pending" => {
                backoff = Duration::ZERO
            }
            Err(Failure::OAuth { error, .. }) if error == "slow_down" => {
                interval += Duration::from_secs(5)
            }
            Err(Failure::OAuth { error, .. }) if error == "expired_token" => {
                return Err(
                    Error::auth("the device code expired before the login was approved").with_hint(
                        "run `qlam-hpc login` again and approve it within the time shown",
                    ),
                );
            }
            Err(Failure::OAuth { error, .. }) if error == "access_denied" => {
                return Err(Error::auth("the login was denied at the IdP")
                    .with_hint("run `qlam-hpc login` again and approve the request"));
            }
            Err(f) if f.is_transient() => {
                // Treat like slow_down plus back-off: an overloaded IdP must not be hammered.
                if let Failure::RateLimited(Some(ra)) = &f {
                    backoff = backoff.max(*ra);
                }
                backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                observer.transient(&f.describe());
                last_transient = Some(f.describe());
            }
            Err(f) => return Err(f.into_error("polling for the device login")),
        }
    }
}

fn sleep_observed(wait: Duration, expires: Instant, observer: &mut dyn PollObserver) {
    let end = Instant::now() + wait;
    loop {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(250)));
        observer.waiting(expires.saturating_duration_since(Instant::now()));
    }
}
