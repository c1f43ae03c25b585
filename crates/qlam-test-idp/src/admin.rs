//! `/admin/*`: everything [`crate::Idp`] can do, over HTTP, for tests in other processes.
//! Admin requests are never counted and never meet injected faults. Bodies may be forms or
//! JSON objects. Errors answer `{"ok":false,"error":"..."}` with 400 (bad input),
//! 404 (unknown endpoint, or no such pending user code) or 405 (wrong method).
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /admin/counters` | | [`crate::Counters`] as an object of 17 integers |
//! | `POST /admin/reset-counters` | | `{"ok":true}` (also clears the request log) |
//! | `GET /admin/pending` | | `{"user_codes":["BCDF-GHJK",...]}`, oldest first |
//! | `POST /admin/approve` | `user_code` | `{"ok":true}`; 404 if not pending |
//! | `POST /admin/deny` | `user_code` | `{"ok":true}`; 404 if not pending |
//! | `POST /admin/faults` | JSON `{"endpoint":E,"fault":F,"times":N}` | `{"ok":true}` |
//! | `POST /admin/clear-faults` | | `{"ok":true}` |
//! | `POST /admin/config` | JSON, any of `access_token_ttl`, `reuse_interval` (seconds), `m2m_quota` (integer or null), `auto_approve` (bool) | `{"ok":true,` + the four settings `}` |
//! | `POST /admin/revoke-all` | | `{"ok":true}` |
//! | `POST /admin/introspect` | `token` | `{"active":true\|false}` |
//! | `GET /admin/requests` | | array of [`crate::RequestRecord`] objects |
//! | `POST /admin/revoke-client-key` | `client_id`, `kid` | `{"ok":true}`; 404 if the client has no key with that `kid` |
//! | `POST /admin/reject-assertions` | `count` (integer) | `{"ok":true}`; the next `count` otherwise valid private_key_jwt assertions get 401 `invalid_client` "assertion replay detected" |
//!
//! Faults: `E` is `discovery`, `device_authorization` (or `device`), `token`,
//! `revocation` (or `revoke`) or `any` (the default); `F` is `{"status":503}`,
//! `{"rate_limit":{"retry_after":1}}`, `{"latency_ms":200}`, `"drop"` or
//! `"malformed_json"`; `times` absent or null means until cleared.

use std::time::Instant;

use serde_json::{Value, json};

use crate::Inner;
use crate::faults::{Endpoint, Fault};
use crate::http::{Request, Response};
use crate::state::TEST_USER;
use crate::util::{Params, normalize_user_code};

pub(crate) fn handle(inner: &Inner, req: &Request) -> Response {
    let path = req.path.trim_start_matches("/admin/");
    let get = req.method == "GET";
    let post = req.method == "POST";
    let result = match path {
        "counters" if get => Ok(json!(inner.lock().counters.clone())),
        "requests" if get => Ok(json!(inner.lock().log())),
        "pending" if get => {
            Ok(json!({"user_codes": inner.lock().pending_user_codes(Instant::now())}))
        }
        "reset-counters" if post => {
            inner.lock().reset_counters();
            ok()
        }
        "approve" | "deny" if post => decide(inner, req, path == "approve"),
        "faults" if post => push_fault(inner, req),
        "clear-faults" if post => {
            inner.lock().faults.clear();
            ok()
        }
        "config" if post => config(inner, req),
        "revoke-all" if post => {
            inner.lock().revoke_all();
            ok()
        }
        "introspect" if post => introspect(inner, req),
        "revoke-client-key" if post => revoke_client_key(inner, req),
        "reject-assertions" if post => reject_assertions(inner, req),
        "counters" | "requests" | "pending" | "reset-counters" | "approve" | "deny" | "faults"
        | "clear-faults" | "config" | "revoke-all" | "introspect" | "revoke-client-key"
        | "reject-assertions" => Err((405, "method not allowed".to_string())),
        _ => Err((404, format!("no admin endpoint {}", req.path))),
    };
    match result {
        Ok(v) => Response::json(200, &v),
        Err((status, msg)) => Response::json(status, &json!({"ok": false, "error": msg})),
    }
}

type AdminResult = Result<Value, (u16, String)>;

fn ok() -> AdminResult {
    Ok(json!({"ok": true}))
}

/// Form or JSON parameters; a body that looks like a JSON object is read as JSON whatever
/// its content type (`curl -d '{...}'` sends a form content type).
fn params(req: &Request) -> Result<Params, (u16, String)> {
    if req.body.trim_ascii_start().starts_with(b"{") {
        return Params::from_json(&req.body).map_err(|e| (400, e));
    }
    Params::from_body(req).map_err(|e| (400, e))
}

fn json_body(req: &Request) -> Result<serde_json::Map<String, Value>, (u16, String)> {
    let v: Value =
        serde_json::from_slice(&req.body).map_err(|e| (400, format!("body is not JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err((400, "body must be a JSON object".into())),
    }
}

fn decide(inner: &Inner, req: &Request, approve: bool) -> AdminResult {
    let p = params(req)?;
    let code = p
        .get("user_code")
        .ok_or((400, "user_code is required".to_string()))?;
    let user = approve.then_some(TEST_USER);
    if inner
        .lock()
        .decide_device(Instant::now(), &normalize_user_code(code), user)
    {
        ok()
    } else {
        Err((404, "no pending device code with that user code".into()))
    }
}

fn push_fault(inner: &Inner, req: &Request) -> AdminResult {
    let body = json_body(req)?;
    let endpoint = match body.get("endpoint") {
        None | Some(Value::Null) => Endpoint::Any,
        Some(v) => v
            .as_str()
            .and_then(Endpoint::from_name)
            .ok_or((400, format!("unknown endpoint {v}")))?,
    };
    let fault = body
        .get("fault")
        .and_then(Fault::from_json)
        .ok_or((400, "missing or unknown fault".to_string()))?;
    let times = match body.get("times") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or((400, "times must be a non-negative integer".to_string()))?,
        ),
    };
    inner.lock().faults.push(endpoint, fault, times);
    ok()
}

fn config(inner: &Inner, req: &Request) -> AdminResult {
    let body = json_body(req)?;
    let mut st = inner.lock();
    let mut settings = st.settings.clone();
    let uint = |k: &str, v: &Value| {
        v.as_u64()
            .ok_or((400, format!("{k} must be a non-negative integer")))
    };
    for (k, v) in &body {
        match k.as_str() {
            "access_token_ttl" => settings.access_token_ttl = uint(k, v)?,
            "reuse_interval" => settings.reuse_interval = uint(k, v)?,
            "m2m_quota" => settings.m2m_quota = if v.is_null() { None } else { Some(uint(k, v)?) },
            "auto_approve" => {
                settings.auto_approve = v
                    .as_bool()
                    .ok_or((400, "auto_approve must be a boolean".to_string()))?
            }
            other => return Err((400, format!("unknown setting {other:?}"))),
        }
    }
    st.settings = settings;
    let s = &st.settings;
    Ok(json!({
        "ok": true,
        "access_token_ttl": s.access_token_ttl,
        "reuse_interval": s.reuse_interval,
        "m2m_quota": s.m2m_quota,
        "auto_approve": s.auto_approve,
    }))
}

fn introspect(inner: &Inner, req: &Request) -> AdminResult {
    let p = params(req)?;
    let token = p
        .get("token")
        .ok_or((400, "token is required".to_string()))?;
    let active = inner.lock().introspect(Instant::now(), token)["active"] == json!(true);
    Ok(json!({"active": active}))
}

fn revoke_client_key(inner: &Inner, req: &Request) -> AdminResult {
    let p = params(req)?;
    let client_id = p
        .get("client_id")
        .ok_or((400, "client_id is required".to_string()))?;
    let kid = p.get("kid").ok_or((400, "kid is required".to_string()))?;
    if !inner.keys.has_kid(client_id, kid) {
        return Err((
            404,
            format!("client {client_id:?} has no key with kid {kid:?}"),
        ));
    }
    inner.lock().assertions.revoke(client_id, kid);
    ok()
}

fn reject_assertions(inner: &Inner, req: &Request) -> AdminResult {
    let p = params(req)?;
    let count = p
        .get("count")
        .and_then(|c| c.parse::<u32>().ok())
        .ok_or((400, "count must be a non-negative integer".to_string()))?;
    inner.lock().assertions.reject_next(count);
    ok()
}
