//! OAuth error answers (RFC 6749 §5.2): a JSON `error` code and description with a status.

use serde_json::json;

use crate::http::Response;

/// An error answered by an OAuth endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub(crate) status: u16,
    pub(crate) error: &'static str,
    pub(crate) description: String,
    /// Set when the error was injected for a test (the fault's name, for request records).
    pub(crate) injected: Option<&'static str>,
}

impl OAuthError {
    /// A 400 error with this code.
    pub(crate) fn bad(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: 400,
            error,
            description: description.into(),
            injected: None,
        }
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::bad("invalid_request", description)
    }

    pub(crate) fn invalid_grant(description: impl Into<String>) -> OAuthError {
        OAuthError::bad("invalid_grant", description)
    }

    /// 401 `invalid_client`.
    pub(crate) fn invalid_client(description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: 401,
            error: "invalid_client",
            description: description.into(),
            injected: None,
        }
    }

    /// Marks the error as an injected fault named `fault`.
    pub(crate) fn injected(mut self, fault: &'static str) -> OAuthError {
        self.injected = Some(fault);
        self
    }

    pub(crate) fn response(&self) -> Response {
        let mut resp = Response::json(
            self.status,
            &json!({"error": self.error, "error_description": self.description}),
        )
        .with_header("Cache-Control", "no-store");
        if self.status == 401 {
            resp = resp.with_header("WWW-Authenticate", "Basic realm=\"qlam-test-idp\"");
        }
        resp
    }
}
