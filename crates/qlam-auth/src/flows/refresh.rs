//! The refresh-token grant. With rotation every success returns a new refresh token and
//! spends the old one, so callers must persist the answer before anything else (see
//! `store::single_flight`). One request per call; no retries here.

use crate::config::Provider;
use crate::discovery::Discovery;
use crate::flows::TokenResponse;
use crate::http::{Failure, HttpClient};
use crate::secret::Secret;

/// Exchange `refresh_token` for new tokens.
pub fn refresh(
    http: &HttpClient,
    disc: &Discovery,
    provider: &Provider,
    client_secret: Option<&Secret>,
    refresh_token: &Secret,
) -> Result<TokenResponse, Failure> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose()),
        ("client_id", provider.client_id.as_str()),
    ];
    if let Some(t) = &provider.tenant {
        form.push(("organization", t.as_str()));
    }
    if let Some(s) = client_secret {
        form.push(("client_secret", s.expose()));
    }
    let v = http.post_form(&disc.token_endpoint, &form, None)?;
    TokenResponse::from_json(&v)
}
