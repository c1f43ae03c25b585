//! Client authentication (RFC 6749 §2.3): what the request presents, then whether it
//! matches a registered client. A new method (e.g. `private_key_jwt`, RFC 7523) is one more
//! [`Presented`] variant, recognised in [`presented`] and checked in [`authenticate`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::config::ClientSpec;
use crate::error::OAuthError;
use crate::http::Request;
use crate::util::{Params, form_decode};

/// The client credentials a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Presented {
    /// No secret: a public client naming itself with `client_id` (or not at all).
    None { client_id: Option<String> },
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post { client_id: String, secret: String },
    /// `client_secret_basic`: HTTP Basic with form-encoded id and secret.
    Basic { client_id: String, secret: String },
}

impl Presented {
    /// Name recorded in request records.
    pub(crate) fn method_name(&self) -> &'static str {
        match self {
            Presented::None { .. } => "none",
            Presented::Post { .. } => "post",
            Presented::Basic { .. } => "basic",
        }
    }

    pub(crate) fn client_id(&self) -> Option<&str> {
        match self {
            Presented::None { client_id } => client_id.as_deref(),
            Presented::Post { client_id, .. } | Presented::Basic { client_id, .. } => {
                Some(client_id)
            }
        }
    }
}

/// Reads the client credentials from the `Authorization` header and the parameters.
pub(crate) fn presented(req: &Request, params: &Params) -> Result<Presented, OAuthError> {
    let form_id = params.get("client_id");
    let form_secret = params.get("client_secret");
    if let Some(auth) = req.header("authorization") {
        let (scheme, rest) = auth.split_once(' ').unwrap_or((auth, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
            let (id, secret) = (form_decode(id), form_decode(secret));
            if form_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "more than one client authentication method used",
                ));
            }
            if form_id.is_some_and(|f| f != id) {
                return Err(OAuthError::invalid_client(
                    "client_id in the body differs from the Basic credentials",
                ));
            }
            return Ok(Presented::Basic {
                client_id: id,
                secret,
            });
        }
    }
    match (form_id, form_secret) {
        (Some(id), Some(secret)) => Ok(Presented::Post {
            client_id: id.into(),
            secret: secret.into(),
        }),
        (None, Some(_)) => Err(OAuthError::invalid_client(
            "client_secret given without client_id",
        )),
        (id, None) => Ok(Presented::None {
            client_id: id.map(Into::into),
        }),
    }
}

/// Checks the presented credentials against the registered clients.
pub(crate) fn authenticate<'a>(
    clients: &'a [ClientSpec],
    presented: &Presented,
) -> Result<&'a ClientSpec, OAuthError> {
    let Some(id) = presented.client_id() else {
        return Err(OAuthError::invalid_client(
            "no client authentication included",
        ));
    };
    let client = clients
        .iter()
        .find(|c| c.client_id == id)
        .ok_or_else(|| OAuthError::invalid_client(format!("unknown client {id:?}")))?;
    match (presented, client.client_secret.as_deref()) {
        (Presented::None { .. }, None) => Ok(client),
        (Presented::None { .. }, Some(_)) => Err(OAuthError::invalid_client(
            "this client must authenticate (client_secret_post or client_secret_basic)",
        )),
        (Presented::Post { .. } | Presented::Basic { .. }, None) => Err(
            OAuthError::invalid_client("this client is public and has no secret"),
        ),
        (Presented::Post { secret, .. } | Presented::Basic { secret, .. }, Some(expected)) => {
            if constant_time_eq(secret.as_bytes(), expected.as_bytes()) {
                Ok(client)
            } else {
                Err(OAuthError::invalid_client("wrong client secret"))
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
