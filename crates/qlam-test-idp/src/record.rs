//! What the IdP observed: request counters and a log of token, device and revocation
//! requests. Both are updated under the IdP's single state lock, so they are exact under
//! any concurrency.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Request counters (a snapshot). Requests to `/admin/*` are never counted.
///
/// Every request to an endpoint is counted, including requests that were rejected or
/// answered by an injected fault. For the refresh grant,
/// `refresh_requests == refresh_ok + refresh_rejected + <faults that replaced the answer>`.
/// Fields missing from a serialized form read as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Requests for either discovery document (including 404s in the other mode).
    pub discovery: u64,
    /// Requests to `/oauth/device/code`.
    pub device_authorization: u64,
    /// Token requests with the device-code grant.
    pub device_token_polls: u64,
    /// Device-code grants that returned tokens.
    pub device_tokens_issued: u64,
    /// Token requests with the refresh-token grant.
    pub refresh_requests: u64,
    /// Refresh requests answered with new tokens.
    pub refresh_ok: u64,
    /// Refresh requests answered with an error by the grant (not by a fault).
    pub refresh_rejected: u64,
    /// Refresh-token families revoked, whatever the cause (reuse detected, `/oauth/revoke`,
    /// `revoke_all`); each family counts once.
    pub families_revoked: u64,
    /// Token requests with the client-credentials grant.
    pub client_credentials_requests: u64,
    /// Client-credentials grants that returned a token (the M2M quota's unit).
    pub client_credentials_ok: u64,
    /// Token requests with the authorization-code grant.
    pub authorization_code_requests: u64,
    /// Requests to `/oauth/revoke`.
    pub revocations: u64,
    /// Faults applied, of any kind: from the fault queue, and assertions rejected by
    /// [`crate::Idp::reject_next_assertions`].
    pub faults_injected: u64,
    /// Requests to `/oauth/token`, whatever the grant.
    pub token_requests: u64,
    /// private_key_jwt client assertions checked, at any endpoint (not those answered by a
    /// queued fault, nor requests malformed before the check, e.g. without
    /// `client_assertion_type`).
    pub client_assertions: u64,
    /// Of those, the ones rejected, whatever the reason (replays and forced rejections
    /// included); the rest authenticated their client.
    pub client_assertions_rejected: u64,
    /// Assertions rejected because their `jti` had been used before (genuine replays; not
    /// the rejections forced by [`crate::Idp::reject_next_assertions`]).
    pub assertion_replays: u64,
}

/// One request to the token, device-authorization or revocation endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Arrival order, from 1 (restarts after `reset_counters`).
    pub seq: u64,
    /// `token`, `device_authorization` or `revocation`.
    pub endpoint: String,
    /// The `grant_type` parameter, if any.
    pub grant_type: Option<String>,
    /// Names of all form parameters, in the order sent.
    pub params: Vec<String>,
    /// Values of the non-secret parameters present (see [`RequestRecord::PUBLIC_PARAMS`]).
    pub values: BTreeMap<String, String>,
    /// Client authentication presented: `none`, `post` (`client_secret_post`), `basic`
    /// (`client_secret_basic`) or `private_key_jwt`.
    pub auth_method: String,
    /// Status answered; `None` when the connection was dropped by a fault.
    pub status: Option<u16>,
    /// The injected fault that applied, if any (`reject_assertion` for a rejection forced by
    /// [`crate::Idp::reject_next_assertions`]).
    pub fault: Option<String>,
}

impl RequestRecord {
    /// Parameters whose values are recorded; every other value may be a secret.
    pub const PUBLIC_PARAMS: &'static [&'static str] = &[
        "scope",
        "audience",
        "organization",
        "client_id",
        "grant_type",
        "token_type_hint",
        "client_assertion_type",
    ];
}
