//! RFC 7009 token revocation, for `logout --revoke`. The endpoint answers 200 with an empty
//! body on success, also for tokens it does not know.

use crate::config::Provider;
use crate::discovery::Discovery;
use crate::error::{Error, Result};
use crate::http::{Failure, HttpClient};
use crate::secret::Secret;

/// Revoke `refresh_token` at the IdP's revocation endpoint.
pub fn revoke_refresh_token(
    http: &HttpClient,
    disc: &Discovery,
    provider: &Provider,
    refresh_token: &Secret,
    client_secret: Option<&Secret>,
) -> Result<()> {
    let endpoint = disc.revocation_endpoint.as_deref().ok_or_else(|| {
        Error::config("the IdP does not offer token revocation (no revocation_endpoint in its discovery document)")
            .with_hint("run `qlam-hpc logout` without --revoke to remove the local credentials; the refresh token then expires on its own")
    })?;
    let mut form: Vec<(&str, &str)> = vec![
        ("token", refresh_token.expose()),
        ("token_type_hint", "refresh_token"),
        ("client_id", provider.client_id.as_str()),
    ];
    if let Some(s) = client_secret {
        form.push(("client_secret", s.expose()));
    }
    match http.post_form_status(endpoint, &form) {
        Ok(200..=299) => Ok(()),
        Ok(status) => Err(Failure::Status(status).into_error("revoking the refresh token")),
        Err(f) => Err(f.into_error("revoking the refresh token")),
    }
}
