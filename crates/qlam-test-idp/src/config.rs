//! Start-up configuration of the test IdP: lifetimes, registered clients (with their
//! secrets or private_key_jwt public keys), discovery mode.

use std::fmt;
use std::str::FromStr;
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

/// The `client_assertion_type` of private_key_jwt (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Signature algorithms accepted for private_key_jwt client assertions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl SigningAlg {
    /// Every supported algorithm, in the order discovery lists them.
    pub const ALL: [SigningAlg; 4] = [
        SigningAlg::Rs256,
        SigningAlg::Rs384,
        SigningAlg::Ps256,
        SigningAlg::Es256,
    ];

    /// The JOSE name (`RS256`, `RS384`, `PS256`, `ES256`).
    pub fn name(self) -> &'static str {
        match self {
            SigningAlg::Rs256 => "RS256",
            SigningAlg::Rs384 => "RS384",
            SigningAlg::Ps256 => "PS256",
            SigningAlg::Es256 => "ES256",
        }
    }

    /// Parses a JOSE name (exact case, as in a JWT header).
    pub fn from_name(name: &str) -> Option<SigningAlg> {
        SigningAlg::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SigningAlg {
    type Err = String;

    /// Accepts the JOSE name in any case (`rs256` on a command line is fine).
    fn from_str(s: &str) -> Result<SigningAlg, String> {
        SigningAlg::from_name(&s.to_ascii_uppercase())
            .ok_or_else(|| format!("unsupported algorithm {s:?} (RS256, RS384, PS256 or ES256)"))
    }
}

/// A public key a client signs private_key_jwt assertions with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKey {
    /// The only algorithm this key verifies.
    pub alg: SigningAlg,
    /// Key id; an assertion whose header names a `kid` is checked against the keys with
    /// that id. Needed to address the key in [`crate::Idp::revoke_client_key`].
    pub kid: Option<String>,
    /// The public key in PEM: SPKI (`PUBLIC KEY`), or PKCS#1 (`RSA PUBLIC KEY`) for RSA.
    /// ES256 keys must be on P-256. Checked by [`crate::Idp::start`].
    pub public_key_pem: String,
}

impl ClientKey {
    /// A key without a `kid`.
    pub fn new(alg: SigningAlg, public_key_pem: impl Into<String>) -> ClientKey {
        ClientKey {
            alg,
            kid: None,
            public_key_pem: public_key_pem.into(),
        }
    }

    /// The same key with a `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> ClientKey {
        self.kid = Some(kid.into());
        self
    }
}

/// A registered client.
///
/// How it must authenticate at the token, device-authorization and revocation endpoints
/// follows from what it has: neither a secret nor keys, a public client (`none`); a secret,
/// `client_secret_post` or `client_secret_basic`; keys, `private_key_jwt`; both, any of those.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    pub client_id: String,
    /// `None` for a public client or a private_key_jwt-only one.
    pub client_secret: Option<String>,
    /// Allowed grants by short name (`device_code`, `refresh_token`, `authorization_code`,
    /// `client_credentials`); the device grant's URN is accepted too.
    pub grant_types: Vec<String>,
    /// Public keys for private_key_jwt (RFC 7523); several for key rotation. Empty: the
    /// client cannot use private_key_jwt.
    pub jwks: Vec<ClientKey>,
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
            jwks: Vec::new(),
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
            jwks: Vec::new(),
        }
    }

    /// A confidential client without a secret that authenticates with private_key_jwt
    /// using any of `keys`; allowed every grant, client credentials included.
    pub fn private_key_jwt(client_id: &str, keys: Vec<ClientKey>) -> ClientSpec {
        ClientSpec {
            client_secret: None,
            jwks: keys,
            ..ClientSpec::confidential(client_id, "")
        }
    }

    /// Adds a private_key_jwt key (and the client-credentials grant, if missing): a public
    /// client becomes a private_key_jwt one, a confidential one accepts both methods.
    pub fn with_key(mut self, key: ClientKey) -> ClientSpec {
        self.jwks.push(key);
        if !self.allows(GRANT_CLIENT_CREDENTIALS) {
            self.grant_types.push(GRANT_CLIENT_CREDENTIALS.into());
        }
        self
    }

    /// Whether the client authenticates with nothing but its id.
    pub fn is_public(&self) -> bool {
        self.client_secret.is_none() && self.jwks.is_empty()
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
            .map(|c| {
                (
                    &c.client_id,
                    c.client_secret.as_ref().map(|_| "<redacted>"),
                    c.jwks.len(),
                )
            })
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
