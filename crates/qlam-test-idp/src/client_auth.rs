//! Client authentication (RFC 6749 §2.3, RFC 7523 §2.2): what the request presents, then
//! whether it matches a registered client. Each method is one [`Presented`] variant,
//! recognised in [`presented`] and checked in [`authenticate`]; private_key_jwt assertions
//! are verified in [`crate::assertion`].

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::Inner;
use crate::assertion;
use crate::config::{ClientSpec, JWT_BEARER_ASSERTION_TYPE};
use crate::error::OAuthError;
use crate::http::Request;
use crate::util::{Params, form_decode};

/// A credential that must never reach a log through `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Redacted(pub(crate) String);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The client credentials a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Presented {
    /// No secret: a public client naming itself with `client_id` (or not at all).
    None { client_id: Option<String> },
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post { client_id: String, secret: String },
    /// `client_secret_basic`: HTTP Basic with form-encoded id and secret.
    Basic { client_id: String, secret: String },
    /// `private_key_jwt`: a signed JWT in `client_assertion`. `client_id` is the body's, else
    /// the one the assertion claims (unverified until [`authenticate`]).
    Assertion {
        client_id: Option<String>,
        assertion: Redacted,
    },
}

impl Presented {
    /// Name recorded in request records.
    pub(crate) fn method_name(&self) -> &'static str {
        match self {
            Presented::None { .. } => "none",
            Presented::Post { .. } => "post",
            Presented::Basic { .. } => "basic",
            Presented::Assertion { .. } => "private_key_jwt",
        }
    }

    pub(crate) fn client_id(&self) -> Option<&str> {
        match self {
            Presented::None { client_id } | Presented::Assertion { client_id, .. } => {
                client_id.as_deref()
            }
            Presented::Post { client_id, .. } | Presented::Basic { client_id, .. } => {
                Some(client_id)
            }
        }
    }
}

/// Whether the parameters carry a client assertion (well-formed or not).
pub(crate) fn has_assertion(params: &Params) -> bool {
    params.get("client_assertion").is_some() || params.get("client_assertion_type").is_some()
}

/// Reads the client credentials from the `Authorization` header and the parameters.
pub(crate) fn presented(req: &Request, params: &Params) -> Result<Presented, OAuthError> {
    let form_id = params.get("client_id");
    let form_secret = params.get("client_secret");
    if has_assertion(params) {
        return presented_assertion(req, params);
    }
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

fn presented_assertion(req: &Request, params: &Params) -> Result<Presented, OAuthError> {
    let basic = req.header("authorization").is_some_and(|a| {
        let scheme = a.split_once(' ').map_or(a, |(scheme, _)| scheme);
        scheme.eq_ignore_ascii_case("basic")
    });
    if basic || params.get("client_secret").is_some() {
        return Err(OAuthError::invalid_request(
            "more than one client authentication method used",
        ));
    }
    let assertion = match (
        params.get("client_assertion_type"),
        params.get("client_assertion"),
    ) {
        (Some(JWT_BEARER_ASSERTION_TYPE), Some(a)) => a,
        (Some(t), Some(_)) => {
            return Err(OAuthError::invalid_client(format!(
                "unsupported client_assertion_type {t:?} (use {JWT_BEARER_ASSERTION_TYPE})"
            )));
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "client_assertion_type is required with client_assertion",
            ));
        }
        (_, None) => {
            return Err(OAuthError::invalid_request(
                "client_assertion is required with client_assertion_type",
            ));
        }
    };
    let claimed = assertion::claimed_client(assertion);
    let client_id = match (params.get("client_id"), claimed) {
        (Some(form), Some(claimed)) if form != claimed => {
            return Err(OAuthError::invalid_client(format!(
                "client_id {form:?} differs from the client the assertion names ({claimed:?})"
            )));
        }
        (Some(form), _) => Some(form.to_string()),
        (None, claimed) => claimed,
    };
    Ok(Presented::Assertion {
        client_id,
        assertion: Redacted(assertion.into()),
    })
}

/// Checks the presented credentials against the registered clients.
pub(crate) fn authenticate<'a>(
    inner: &'a Inner,
    presented: &Presented,
) -> Result<&'a ClientSpec, OAuthError> {
    let secret = match presented {
        Presented::Assertion {
            client_id,
            assertion,
        } => return assertion::authenticate(inner, client_id.as_deref(), &assertion.0),
        Presented::None { .. } => None,
        Presented::Post { secret, .. } | Presented::Basic { secret, .. } => Some(secret),
    };
    let Some(id) = presented.client_id() else {
        return Err(OAuthError::invalid_client(
            "no client authentication included",
        ));
    };
    let client = inner
        .clients
        .iter()
        .find(|c| c.client_id == id)
        .ok_or_else(|| OAuthError::invalid_client(format!("unknown client {id:?}")))?;
    let has_keys = !client.jwks.is_empty();
    match (secret, client.client_secret.as_deref()) {
        (None, None) if !has_keys => Ok(client),
        (None, None) => Err(OAuthError::invalid_client(
            "this client must authenticate with private_key_jwt",
        )),
        (None, Some(_)) if !has_keys => Err(OAuthError::invalid_client(
            "this client must authenticate (client_secret_post or client_secret_basic)",
        )),
        (None, Some(_)) => Err(OAuthError::invalid_client(
            "this client must authenticate (client_secret_post, client_secret_basic or private_key_jwt)",
        )),
        (Some(_), None) if !has_keys => Err(OAuthError::invalid_client(
            "this client is public and has no secret",
        )),
        (Some(_), None) => Err(OAuthError::invalid_client(
            "this client has no secret: it authenticates with private_key_jwt",
        )),
        (Some(secret), Some(expected)) => {
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
