//! Request routing and the OAuth API endpoints (Auth0's paths). Each API request is
//! counted, then meets the oldest matching injected fault, if any, then is processed.

use std::time::Instant;

use serde_json::{Value, json};

use crate::client_auth::{self, Presented};
use crate::config::{
    ClientSpec, DEVICE_GRANT_URN, DiscoveryMode, GRANT_AUTHORIZATION_CODE,
    GRANT_CLIENT_CREDENTIALS, GRANT_DEVICE_CODE, GRANT_REFRESH_TOKEN, SigningAlg,
};
use crate::error::OAuthError;
use crate::faults::{Endpoint, Fault};
use crate::http::{Reply, Request, Response};
use crate::record::RequestRecord;
use crate::state::DEFAULT_SCOPE;
use crate::util::Params;
use crate::{Inner, admin, pages};

/// Discovery document paths.
const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
const OAUTH_METADATA: &str = "/.well-known/oauth-authorization-server";

/// The OAuth API endpoints (faults and counters apply to these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Discovery,
    Device,
    Token,
    Revoke,
    Introspect,
    Userinfo,
    Jwks,
}

impl Api {
    fn fault_endpoint(self) -> Endpoint {
        match self {
            Api::Discovery => Endpoint::Discovery,
            Api::Device => Endpoint::DeviceAuthorization,
            Api::Token => Endpoint::Token,
            Api::Revoke => Endpoint::Revocation,
            // Only `Endpoint::Any` faults match these.
            Api::Introspect | Api::Userinfo | Api::Jwks => Endpoint::Any,
        }
    }

    /// Whether requests are kept in the request log.
    fn logged(self) -> bool {
        matches!(self, Api::Device | Api::Token | Api::Revoke)
    }

    fn methods(self) -> &'static [&'static str] {
        match self {
            Api::Discovery | Api::Jwks => &["GET"],
            Api::Userinfo => &["GET", "POST"],
            Api::Device | Api::Token | Api::Revoke | Api::Introspect => &["POST"],
        }
    }
}

/// Entry point for every request.
pub(crate) fn handle(inner: &Inner, req: &Request) -> Reply {
    let started = Instant::now();
    let (reply, grant) = route(inner, req);
    if let Some(log) = &inner.logger {
        let status = match &reply {
            Reply::Send(r) => r.status.to_string(),
            Reply::Drop => "dropped".into(),
        };
        let grant = grant
            .map(|g| format!(" grant_type={g}"))
            .unwrap_or_default();
        log(&format!(
            "{} {}{grant} -> {status} ({:.1} ms)",
            req.method,
            req.path,
            started.elapsed().as_secs_f64() * 1000.0
        ));
    }
    reply
}

fn route(inner: &Inner, req: &Request) -> (Reply, Option<String>) {
    let api = match req.path.as_str() {
        OPENID_CONFIGURATION | OAUTH_METADATA => Api::Discovery,
        "/oauth/device/code" => Api::Device,
        "/oauth/token" => Api::Token,
        "/oauth/revoke" => Api::Revoke,
        "/oauth/introspect" => Api::Introspect,
        "/userinfo" => Api::Userinfo,
        "/.well-known/jwks.json" => Api::Jwks,
        p if p.starts_with("/admin/") => return (Reply::Send(admin::handle(inner, req)), None),
        _ => return (Reply::Send(pages::handle(inner, req)), None),
    };
    api_request(inner, req, api)
}

fn api_request(inner: &Inner, req: &Request, api: Api) -> (Reply, Option<String>) {
    let params = if req.method == "POST" {
        Params::from_body(req)
    } else {
        Ok(Params::from_query(&req.query))
    };
    let grant = params
        .as_ref()
        .ok()
        .and_then(|p| p.get("grant_type"))
        .map(String::from);
    let fault = {
        let mut st = inner.lock();
        let c = &mut st.counters;
        match api {
            Api::Discovery => c.discovery += 1,
            Api::Device => c.device_authorization += 1,
            Api::Revoke => c.revocations += 1,
            Api::Token => {
                c.token_requests += 1;
                match grant.as_deref() {
                    Some(DEVICE_GRANT_URN) => c.device_token_polls += 1,
                    Some(GRANT_REFRESH_TOKEN) => c.refresh_requests += 1,
                    Some(GRANT_CLIENT_CREDENTIALS) => c.client_credentials_requests += 1,
                    Some(GRANT_AUTHORIZATION_CODE) => c.authorization_code_requests += 1,
                    _ => {}
                }
            }
            Api::Introspect | Api::Userinfo | Api::Jwks => {}
        }
        let fault = st.faults.take(api.fault_endpoint());
        if fault.is_some() {
            st.counters.faults_injected += 1;
        }
        fault
    };
    let mut record = api
        .logged()
        .then(|| new_record(api, req, params.as_ref().ok(), grant.clone()));
    if let Some(fault) = &fault {
        if let Some(r) = &mut record {
            r.fault = Some(fault.describe());
        }
        if let Some(reply) = fault.reply() {
            finish(inner, record, &reply);
            return (reply, grant);
        }
        if let Fault::Latency(d) = fault {
            inner.sleep(*d);
        }
    }
    let resp = if !api.methods().contains(&req.method.as_str()) {
        Response::json(
            405,
            &json!({"error": "invalid_request", "error_description": format!("use {}", api.methods().join(" or "))}),
        )
        .with_header("Allow", &api.methods().join(", "))
    } else {
        match &params {
            Err(e) => OAuthError::invalid_request(e.clone()).response(),
            Ok(p) => match api {
                Api::Discovery => discovery(inner, req),
                Api::Device => json_result(&mut record, device_authorization(inner, req, p)),
                Api::Token => json_result(&mut record, token(inner, req, p)),
                Api::Revoke => match revoke(inner, req, p) {
                    Ok(()) => Response::empty(200),
                    Err(e) => error_response(&mut record, &e),
                },
                Api::Introspect => introspect(inner, p),
                Api::Userinfo => userinfo(inner, req),
                Api::Jwks => Response::json(200, &json!({"keys": []})),
            },
        }
    };
    let reply = Reply::Send(resp);
    finish(inner, record, &reply);
    (reply, grant)
}

fn new_record(
    api: Api,
    req: &Request,
    params: Option<&Params>,
    grant: Option<String>,
) -> RequestRecord {
    let endpoint = match api {
        Api::Device => Endpoint::DeviceAuthorization,
        Api::Revoke => Endpoint::Revocation,
        _ => Endpoint::Token,
    };
    let mut rec = RequestRecord {
        endpoint: endpoint.name().into(),
        grant_type: grant,
        auth_method: "none".into(),
        ..RequestRecord::default()
    };
    if let Some(p) = params {
        rec.params = p.names();
        for name in RequestRecord::PUBLIC_PARAMS {
            if let Some(v) = p.get(name) {
                rec.values.insert((*name).into(), v.into());
            }
        }
        rec.auth_method = match client_auth::presented(req, p) {
            Ok(pr) => pr.method_name().into(),
            Err(_) if client_auth::has_assertion(p) => "private_key_jwt".into(),
            Err(_) if req.header("authorization").is_some() => "basic".into(),
            Err(_) => "post".into(),
        };
    }
    rec
}

fn finish(inner: &Inner, record: Option<RequestRecord>, reply: &Reply) {
    if let Some(mut rec) = record {
        rec.status = match reply {
            Reply::Send(r) => Some(r.status),
            Reply::Drop => None,
        };
        inner.lock().record(rec);
    }
}

fn json_result(record: &mut Option<RequestRecord>, r: Result<Value, OAuthError>) -> Response {
    match r {
        Ok(body) => Response::json(200, &body)
            .with_header("Cache-Control", "no-store")
            .with_header("Pragma", "no-cache"),
        Err(e) => error_response(record, &e),
    }
}

/// The answer for an error, noting in the request record when it was an injected one.
fn error_response(record: &mut Option<RequestRecord>, e: &OAuthError) -> Response {
    if let (Some(fault), Some(rec)) = (e.injected, record.as_mut()) {
        rec.fault = Some(match rec.fault.take() {
            Some(earlier) => format!("{earlier}, {fault}"),
            None => fault.into(),
        });
    }
    e.response()
}

fn reject_duplicates(p: &Params) -> Result<(), OAuthError> {
    match p.duplicate() {
        Some(name) => Err(OAuthError::invalid_request(format!(
            "parameter {name} was sent more than once"
        ))),
        None => Ok(()),
    }
}

/// Authenticates the client and checks that it may use `grant`.
fn client_for<'a>(
    inner: &'a Inner,
    req: &Request,
    p: &Params,
    grant: &str,
) -> Result<&'a ClientSpec, OAuthError> {
    let presented = client_auth::presented(req, p)?;
    let client = client_auth::authenticate(inner, &presented)?;
    if !client.allows(grant) {
        return Err(OAuthError::bad(
            "unauthorized_client",
            format!(
                "client {:?} may not use the {grant} grant",
                client.client_id
            ),
        ));
    }
    Ok(client)
}

// ---- discovery ----

fn discovery(inner: &Inner, req: &Request) -> Response {
    let served = match inner.discovery {
        DiscoveryMode::OpenId => OPENID_CONFIGURATION,
        DiscoveryMode::OAuthOnly => OAUTH_METADATA,
    };
    if req.path != served {
        return Response::json(
            404,
            &json!({"error": "not_found", "error_description": "no such discovery document here"}),
        );
    }
    let b = &inner.base_url;
    let auth_methods = [
        "client_secret_post",
        "client_secret_basic",
        "private_key_jwt",
        "none",
    ];
    let signing_algs: Vec<&str> = SigningAlg::ALL.iter().map(|a| a.name()).collect();
    let mut doc = json!({
        "issuer": format!("{b}/"),
        "authorization_endpoint": format!("{b}/authorize"),
        "token_endpoint": format!("{b}/oauth/token"),
        "device_authorization_endpoint": format!("{b}/oauth/device/code"),
        "revocation_endpoint": format!("{b}/oauth/revoke"),
        "introspection_endpoint": format!("{b}/oauth/introspect"),
        "jwks_uri": format!("{b}/.well-known/jwks.json"),
        "grant_types_supported": [
            GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN, GRANT_CLIENT_CREDENTIALS, DEVICE_GRANT_URN,
        ],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": signing_algs,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": signing_algs,
        "introspection_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
    });
    if inner.discovery == DiscoveryMode::OpenId {
        doc["userinfo_endpoint"] = json!(format!("{b}/userinfo"));
        doc["subject_types_supported"] = json!(["public"]);
        doc["id_token_signing_alg_values_supported"] = json!(["none"]);
        doc["claims_supported"] = json!(["sub", "iss", "aud", "exp", "iat", "email", "name"]);
    }
    Response::json(200, &doc)
}

// ---- device authorization ----

fn device_authorization(inner: &Inner, req: &Request, p: &Params) -> Result<Value, OAuthError> {
    reject_duplicates(p)?;
    let client = client_for(inner, req, p, GRANT_DEVICE_CODE)?;
    let scope = p.get("scope").unwrap_or(DEFAULT_SCOPE);
    let mut st = inner.lock();
    Ok(st.device_authorize(
        Instant::now(),
        &client.client_id,
        scope,
        p.get("audience"),
        &inner.base_url,
    ))
}

// ---- token ----

fn token(inner: &Inner, req: &Request, p: &Params) -> Result<Value, OAuthError> {
    let grant = p.get("grant_type");
    let result = token_grant(inner, req, p);
    let mut st = inner.lock();
    let c = &mut st.counters;
    match (grant, result.is_ok()) {
        (Some(DEVICE_GRANT_URN), true) => c.device_tokens_issued += 1,
        (Some(GRANT_REFRESH_TOKEN), true) => c.refresh_ok += 1,
        (Some(GRANT_REFRESH_TOKEN), false) => c.refresh_rejected += 1,
        (Some(GRANT_CLIENT_CREDENTIALS), true) => c.client_credentials_ok += 1,
        _ => {}
    }
    result
}

fn token_grant(inner: &Inner, req: &Request, p: &Params) -> Result<Value, OAuthError> {
    reject_duplicates(p)?;
    let grant = p
        .get("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
    let short = match grant {
        DEVICE_GRANT_URN => GRANT_DEVICE_CODE,
        GRANT_REFRESH_TOKEN | GRANT_CLIENT_CREDENTIALS | GRANT_AUTHORIZATION_CODE => grant,
        other => {
            return Err(OAuthError::bad(
                "unsupported_grant_type",
                format!("grant type {other:?} is not supported"),
            ));
        }
    };
    let client = client_for(inner, req, p, short)?;
    let id = client.client_id.as_str();
    let required = |name: &str| {
        p.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
    };
    let now = Instant::now();
    match short {
        GRANT_DEVICE_CODE => {
            let code = required("device_code")?;
            inner.lock().device_token(now, id, code)
        }
        GRANT_REFRESH_TOKEN => {
            let rt = required("refresh_token")?;
            inner.lock().refresh(
                now,
                id,
                rt,
                p.get("scope"),
                p.get("audience"),
                p.get("organization"),
            )
        }
        GRANT_CLIENT_CREDENTIALS => inner.lock().client_credentials(
            now,
            id,
            p.get("scope"),
            p.get("audience"),
            p.get("organization"),
        ),
        _ => {
            let code = required("code")?;
            inner
                .lock()
                .exchange_code(now, id, code, p.get("redirect_uri"), p.get("code_verifier"))
        }
    }
}

// ---- revocation, introspection, userinfo ----

fn revoke(inner: &Inner, req: &Request, p: &Params) -> Result<(), OAuthError> {
    let client_id = match client_auth::presented(req, p)? {
        Presented::None { client_id: None } => None,
        pr => Some(client_auth::authenticate(inner, &pr)?.client_id.clone()),
    };
    let token = p
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    inner.lock().revoke(token, client_id.as_deref());
    Ok(())
}

fn introspect(inner: &Inner, p: &Params) -> Response {
    let Some(token) = p.get("token") else {
        return OAuthError::invalid_request("token is required").response();
    };
    let v = inner.lock().introspect(Instant::now(), token);
    Response::json(200, &v).with_header("Cache-Control", "no-store")
}

fn userinfo(inner: &Inner, req: &Request) -> Response {
    let token = req.header("authorization").and_then(|h| {
        let (scheme, rest) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let info = token.and_then(|t| inner.lock().userinfo(Instant::now(), t));
    match info {
        Some(v) => Response::json(200, &v),
        None => Response::json(
            401,
            &json!({"error": "invalid_token", "error_description": "missing, expired or revoked access token"}),
        )
        .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\""),
    }
}
