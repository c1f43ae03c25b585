//! `qlam-test-idp`: a small OAuth2/OIDC identity provider for tests, benchmarks and
//! `qlam-hpc demo`, with Auth0's endpoint paths, refresh-token rotation with reuse
//! detection, and private_key_jwt client authentication (RFC 7523) with replay detection. It binds to loopback only, issues opaque random tokens (`at_…`, `rt_…`),
//! counts every request exactly, injects faults on demand, and can be driven in-process
//! through [`Idp`] or from other processes through the `/admin/*` endpoints.
//!
//! ```no_run
//! use qlam_test_idp::{Idp, IdpConfig};
//! let idp = Idp::start(IdpConfig { auto_approve: true, ..IdpConfig::default() }).unwrap();
//! println!("issuer: {}/", idp.base_url());
//! ```

mod admin;
mod assertion;
mod client_auth;
mod config;
mod error;
mod faults;
mod http;
mod jwt;
mod pages;
mod record;
mod routes;
mod state;
mod util;

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use config::{
    ClientKey, ClientSpec, DEFAULT_CLIENT_ID, DEVICE_GRANT_URN, DiscoveryMode,
    GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS, GRANT_DEVICE_CODE, GRANT_REFRESH_TOKEN,
    IdpConfig, JWT_BEARER_ASSERTION_TYPE, RequestLogger, SigningAlg,
};
pub use faults::{Endpoint, Fault};
pub use record::{Counters, RequestRecord};

use state::{Settings, State, TEST_USER};

/// User who approves device codes through [`Idp::approve`], `/admin/approve` and `/activate`.
pub const APPROVING_USER: &str = state::TEST_USER;
/// User of auto-approved logins ([`IdpConfig::auto_approve`]).
pub const AUTO_APPROVED_USER: &str = state::DEMO_USER;
/// How far ahead of the IdP's clock a client assertion's `exp` may be, in seconds.
pub const ASSERTION_MAX_LIFETIME_SECS: u64 = assertion::MAX_LIFETIME_SECS;
/// Clock skew tolerated for a client assertion's `iat` and `nbf`, in seconds.
pub const ASSERTION_CLOCK_SKEW_SECS: u64 = assertion::CLOCK_SKEW_SECS;

/// Shared by the request handlers and the [`Idp`] handle.
pub(crate) struct Inner {
    state: Mutex<State>,
    clients: Vec<ClientSpec>,
    /// The clients' private_key_jwt public keys, parsed.
    keys: assertion::KeyRing,
    discovery: DiscoveryMode,
    base_url: String,
    logger: Option<RequestLogger>,
    stopping: Mutex<bool>,
    stop_signal: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d`, or less if the IdP is shutting down.
    fn sleep(&self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut stopping = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopping {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            stopping = match self.stop_signal.wait_timeout(stopping, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    fn stop(&self) {
        *self.stopping.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop_signal.notify_all();
    }
}

/// A running test IdP. Dropping it stops the server, joins its threads and frees the port.
pub struct Idp {
    inner: Arc<Inner>,
    server: Option<http::Server>,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

fn loopback_addrs(bind: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = bind.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{bind:?} resolves to no address"),
        ));
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the test IdP binds to loopback only, and {a} is not a loopback address"),
        ));
    }
    Ok(addrs)
}

impl Idp {
    /// Binds `cfg.bind` (loopback only) and starts serving. A client key that does not
    /// parse for its algorithm is an `InvalidInput` error.
    pub fn start(cfg: IdpConfig) -> io::Result<Idp> {
        let keys = assertion::KeyRing::new(&cfg.clients)?;
        let listener = TcpListener::bind(&loopback_addrs(&cfg.bind)?[..])?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let settings = Settings {
            access_token_ttl: cfg.access_token_ttl,
            refresh_token_ttl: cfg.refresh_token_ttl,
            device_code_ttl: cfg.device_code_ttl,
            device_interval: cfg.device_interval,
            reuse_interval: cfg.reuse_interval,
            auto_approve: cfg.auto_approve,
            m2m_quota: cfg.m2m_quota,
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(settings, format!("{base_url}/"))),
            clients: cfg.clients,
            keys,
            discovery: cfg.discovery,
            base_url,
            logger: cfg.request_logger,
            stopping: Mutex::new(false),
            stop_signal: Condvar::new(),
        });
        let handler: http::Handler = {
            let inner = inner.clone();
            Arc::new(move |req| routes::handle(&inner, req))
        };
        let server = http::Server::start(listener, handler)?;
        Ok(Idp {
            inner,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The issuer: [`Idp::base_url`] + `/` (Auth0 style).
    pub fn issuer(&self) -> String {
        format!("{}/", self.inner.base_url)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .map(http::Server::local_addr)
            .expect("server runs while the Idp exists")
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.inner.lock().counters.clone()
    }

    /// Zeroes the counters and clears the request log.
    pub fn reset_counters(&self) {
        self.inner.lock().reset_counters();
    }

    /// Approves a pending device code as `test-user`. False if there is no pending,
    /// unexpired code with that user code (any case, dash optional).
    pub fn approve(&self, user_code: &str) -> bool {
        let code = util::normalize_user_code(user_code);
        self.inner
            .lock()
            .decide_device(Instant::now(), &code, Some(TEST_USER))
    }

    /// Denies a pending device code; false if there is none.
    pub fn deny(&self, user_code: &str) -> bool {
        let code = util::normalize_user_code(user_code);
        self.inner.lock().decide_device(Instant::now(), &code, None)
    }

    /// User codes awaiting approval, oldest first.
    pub fn pending_user_codes(&self) -> Vec<String> {
        self.inner.lock().pending_user_codes(Instant::now())
    }

    /// Queues a fault for the next `times` matching requests (`None`: until cleared).
    pub fn push_fault(&self, endpoint: Endpoint, fault: Fault, times: Option<u32>) {
        self.inner.lock().faults.push(endpoint, fault, times);
    }

    /// Removes every queued fault.
    pub fn clear_faults(&self) {
        self.inner.lock().faults.clear();
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_access_token_ttl(&self, secs: u64) {
        self.inner.lock().settings.access_token_ttl = secs;
    }

    /// Refresh-token reuse interval from now on.
    pub fn set_reuse_interval(&self, secs: u64) {
        self.inner.lock().settings.reuse_interval = secs;
    }

    /// Total client-credentials mints allowed (counted over the IdP's life); `None`: no limit.
    pub fn set_m2m_quota(&self, quota: Option<u64>) {
        self.inner.lock().settings.m2m_quota = quota;
    }

    /// Whether new device codes and `/authorize` requests are approved at once.
    pub fn set_auto_approve(&self, on: bool) {
        self.inner.lock().settings.auto_approve = on;
    }

    /// Revokes every refresh-token family (an admin revoking all logins).
    pub fn revoke_all(&self) {
        self.inner.lock().revoke_all();
    }

    /// Whether an access or refresh token is active (RFC 7662 sense).
    pub fn introspect(&self, token: &str) -> bool {
        self.inner.lock().introspect(Instant::now(), token)["active"] == serde_json::json!(true)
    }

    /// Revokes the private_key_jwt key `kid` of `client_id`: assertions signed with it are
    /// rejected (401 `invalid_client`) from now on, while the client's other keys still work.
    /// False if the client has no key with that `kid`.
    pub fn revoke_client_key(&self, client_id: &str, kid: &str) -> bool {
        if !self.inner.keys.has_kid(client_id, kid) {
            return false;
        }
        self.inner.lock().assertions.revoke(client_id, kid);
        true
    }

    /// Rejects the next `n` private_key_jwt assertions that would otherwise be accepted with
    /// 401 `invalid_client` "assertion replay detected" (their `jti` counts as used); each
    /// counts in [`Counters::faults_injected`]. Replaces any earlier count; 0 cancels.
    pub fn reject_next_assertions(&self, n: u32) {
        self.inner.lock().assertions.reject_next(n);
    }

    /// The log of token, device-authorization and revocation requests, in answer order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.lock().log()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.inner.stop();
        drop(self.server.take());
    }
}
