//! ID tokens: well-formed but unsecured JWTs (`{"alg":"none"}`, RFC 7519 §6), so that
//! clients can decode claims; nothing should trust them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use crate::state::profile;

/// An unsecured ID token for `sub`, issued to `client_id`.
pub(crate) fn id_token(issuer: &str, sub: &str, client_id: &str, iat: u64, ttl: u64) -> String {
    let (email, name) = profile(sub);
    let header = json!({"alg": "none", "typ": "JWT"});
    let claims = json!({
        "iss": issuer,
        "sub": sub,
        "aud": client_id,
        "email": email,
        "email_verified": true,
        "name": name,
        "iat": iat,
        "exp": iat + ttl,
    });
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}
