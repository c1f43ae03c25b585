//! Start-up configuration of the test IdP: lifetimes, registered clients, discovery mode.

use std::fmt;
use std::sync::Arc;

/// Client id of the public client registered by default.
pub const DEFAULT_CLIENT_ID: &str = "qlam-hpc-test";

/// Grant types a client may be allowed, by their short names.
pub const GRANT_DEVICE_CODE: &str = "device_code";
/// See [`GRANT_DEVICE_CODE`].
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
/// See [`GRANT_DEVICE_CODE`].
pub const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
/// See [`GRANT_DEVICE_CODE`].
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";

/// The wire name of the device grant (RFC 8628 §3.4).
pub const DEVICE_GRANT_URN: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Called with one line per handled request (method, path, grant type, status, time);
/// never with token values or secrets.
pub type RequestLogger = Arc<dyn Fn(&str) + Send + Sync>;

/// How the IdP answers discovery requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiscoveryMode {
    /// Serves `/.well-known/openid-configuration` only (as Auth0 does).
    #[default]
    OpenId,
    /// Answers 404 there and serves only `/.well-known/oauth-authorization-server` (RFC 8414).
    OAuthOnly,
}

/// A registered client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    pub client_id: String,
    /// `None` for a public client (token endpoint auth method `none`).
    pub client_secret: Option<String>,
    /// Allowed grants by short name (`device_code`, `refresh_token`, `authorization_code`,
    /// `client_credentials`); the device grant's URN is accepted too.
    pub grant_types: Vec<String>,
}

impl ClientSpec {
    /// A public client allowed the user grants: device code, refresh token, authorization code.
    pub fn public(client_id: &str) -> ClientSpec {
        ClientSpec {
            client_id: client_id.into(),
            client_secret: None,
            grant_types: vec![
                GRANT_DEVICE_CODE.into(),
                GRANT_REFRESH_TOKEN.into(),
                GRANT_AUTHORIZATION_CODE.into(),
            ],
        }
    }

    /// A confidential client allowed every grant, client credentials included.
    pub fn confidential(client_id: &str, secret: &str) -> ClientSpec {
        ClientSpec {
            client_id: client_id.into(),
            client_secret: Some(secret.into()),
            grant_types: vec![
                GRANT_CLIENT_CREDENTIALS.into(),
                GRANT_DEVICE_CODE.into(),
                GRANT_REFRESH_TOKEN.into(),
                GRANT_AUTHORIZATION_CODE.into(),
            ],
        }
    }

    /// Whether this client may use `grant` (short name or device URN).
    pub fn allows(&self, grant: &str) -> bool {
        let short = if grant == DEVICE_GRANT_URN {
            GRANT_DEVICE_CODE
        } else {
            grant
        };
        self.grant_types.iter().any(|g| {
            let g = if g == DEVICE_GRANT_URN {
                GRANT_DEVICE_CODE
            } else {
                g.as_str()
            };
            g == short
        })
    }
}

/// Configuration given to [`crate::Idp::start`].
#[derive(Clone)]
pub struct IdpConfig {
    /// Loopback address to bind; default `127.0.0.1:0` (any free port).
    pub bind: String,
    /// Access-token lifetime in seconds (`expires_in`); default 3600.
    pub access_token_ttl: u64,
    /// Refresh-token lifetime in seconds, counted from the login (absolute); default 15 days.
    pub refresh_token_ttl: u64,
    /// Device-code lifetime in seconds; default 600.
    pub device_code_ttl: u64,
    /// `interval` in the device authorization response; `None` omits the field (the
    /// server then enforces 5 s, as RFC 8628 says clients assume). Default `Some(5)`.
    pub device_interval: Option<u64>,
    /// Auth0-style refresh-token reuse interval in seconds; 0 (default): any reuse of a
    /// used refresh token revokes its whole family.
    pub reuse_interval: u64,
    /// Approve device codes and `/authorize` requests at once, as user `demo-user`.
    pub auto_approve: bool,
    /// Registered clients; default: the public client [`DEFAULT_CLIENT_ID`].
    pub clients: Vec<ClientSpec>,
    /// Which discovery document is served.
    pub discovery: DiscoveryMode,
    /// Total client-credentials mints allowed; past it the token endpoint answers 429
    /// `too_many_requests`. `None`: unlimited.
    pub m2m_quota: Option<u64>,
    /// Receives one log line per request, if set.
    pub request_logger: Option<RequestLogger>,
}

impl Default for IdpConfig {
    fn default() -> Self {
        IdpConfig {
            bind: "127.0.0.1:0".into(),
            access_token_ttl: 3600,
            refresh_token_ttl: 15 * 24 * 3600,
            device_code_ttl: 600,
            device_interval: Some(5),
            reuse_interval: 0,
            auto_approve: false,
            clients: vec![ClientSpec::public(DEFAULT_CLIENT_ID)],
            discovery: DiscoveryMode::OpenId,
            m2m_quota: None,
            request_logger: None,
        }
    }
}

impl fmt::Debug for IdpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clients: Vec<_> = self
            .clients
            .iter()
            .map(|c| (&c.client_id, c.client_secret.as_ref().map(|_| "<redacted>")))
            .collect();
        f.debug_struct("IdpConfig")
            .field("bind", &self.bind)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("device_code_ttl", &self.device_code_ttl)
            .field("device_interval", &self.device_interval)
            .field("reuse_interval", &self.reuse_interval)
            .field("auto_approve", &self.auto_approve)
            .field("clients", &clients)
            .field("discovery", &self.discovery)
            .field("m2m_quota", &self.m2m_quota)
            .field("request_logger", &self.request_logger.is_some())
            .finish()
    }
}
