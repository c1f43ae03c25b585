//! The OAuth flows: device authorization (RFC 8628), refresh with rotation, and the token
//! response they share. Each flow makes single requests; retries and locking belong to the
//! caller (see `store::single_flight`).

pub mod browser;
pub mod client_auth;
pub mod client_credentials;
pub mod device;
pub mod refresh;
pub mod revoke;

use serde_json::Value;

use crate::http::Failure;
use crate::secret::Secret;

/// A token endpoint's successful answer.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: Secret,
    /// Usually `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds, if given.
    pub expires_in: Option<i64>,
    /// A (new) refresh token, if given.
    pub refresh_token: Option<Secret>,
    /// An ID token, if given.
    pub id_token: Option<Secret>,
    /// Granted scope, if given.
    pub scope: Option<String>,
}

impl TokenResponse {
    /// Parse a token endpoint response.
    pub fn from_json(v: &Value) -> Result<TokenResponse, Failure> {
        let s = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .filter(|x| !x.is_empty())
                .map(str::to_string)
        };
        let access_token = s("access_token")
            .ok_or_else(|| Failure::Malformed("token response without access_token".into()))?;
        let expires_in = match v.get("expires_in") {
            Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        Ok(TokenResponse {
            access_token: Secret::new(access_token),
            token_type: s("token_type").unwrap_or_else(|| "Bearer".into()),
            expires_in,
            refresh_token: s("refresh_token").map(Secret::new),
            id_token: s("id_token").map(Secret::new),
            scope: s("scope"),
        })
    }
}

/// Add Auth0's `audience` parameter when configured.
pub(crate) fn push_audience<'a>(form: &mut Vec<(&'a str, &'a str)>, audience: &'a Option<String>) {
    if let Some(a) = audience {
        form.push(("audience", a.as_str()));
    }
}
