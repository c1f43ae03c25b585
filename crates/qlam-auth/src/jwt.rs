//! Reading (not verifying) the claims of an ID token, for `status` ("who is logged in").
//! Nothing here is used for an authorization decision.

use base64::Engine;

/// The identity claims `status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `sub`
    pub subject: Option<String>,
    /// `email`
    pub email: Option<String>,
    /// `name`
    pub name: Option<String>,
}

/// Decode the payload of a compact JWT without checking its signature.
pub fn unverified_claims(jwt: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The identity in an ID token, if it can be read.
pub fn identity(id_token: &str) -> Option<Identity> {
    let claims = unverified_claims(id_token)?;
    let get = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Some(Identity {
        subject: get("sub"),
        email: get("email"),
        name: get("name"),
    })
}
