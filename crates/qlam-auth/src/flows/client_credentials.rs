//! The client-credentials grant (M2M): one request that mints an access token, with Auth0's
//! `audience`, `organization` and the configured `scope`. Retries, locking, the monthly
//! budget and key rotation belong to the caller (`session`).

use crate::config::Provider;
use crate::discovery::Discovery;
use crate::flows::TokenResponse;
use crate::flows::client_auth::{ASSERTION_TYPE, ClientAuth, SigningKey};
use crate::http::{Failure, HttpClient};

/// Which credential to present: for `PrivateKeyJwt`, the index of the key to sign with.
pub fn mint(
    http: &HttpClient,
    disc: &Discovery,
    provider: &Provider,
    auth: &ClientAuth,
    key_index: usize,
    now: u64,
) -> Result<TokenResponse, Failure> {
    let mut form: Vec<(&str, String)> = vec![("grant_type", "client_credentials".into())];
    if let Some(a) = &provider.audience {
        form.push(("audience", a.clone()));
    }
    if let Some(s) = &provider.scope {
        form.push(("scope", s.clone()));
    }
    if let Some(t) = &provider.tenant {
        form.push(("organization", t.clone()));
    }
    let mut basic = None;
    match auth {
        ClientAuth::None => form.push(("client_id", provider.client_id.clone())),
        ClientAuth::SecretPost(s) => {
            form.push(("client_id", provider.client_id.clone()));
            form.push(("client_secret", s.expose().to_string()));
        }
        ClientAuth::SecretBasic(s) => basic = Some((provider.client_id.as_str(), s)),
        ClientAuth::PrivateKeyJwt(keys) => {
            let key: &SigningKey = &keys[key_index.min(keys.len() - 1)];
            let aud = provider
                .assertion_audience
                .clone()
                .unwrap_or_else(|| disc.issuer.clone());
            let assertion = key
                .assertion(&provider.client_id, &aud, now)
                .map_err(|e| Failure::Malformed(e.message().to_string()))?;
            form.push(("client_id", provider.client_id.clone()));
            form.push(("client_assertion_type", ASSERTION_TYPE.into()));
            form.push(("client_assertion", assertion.expose().to_string()));
        }
    }
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let v = http.post_form(&disc.token_endpoint, &pairs, basic)?;
    TokenResponse::from_json(&v)
}
