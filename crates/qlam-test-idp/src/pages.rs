//! The pages a person (or curl) uses: `/activate` to approve a device code and
//! `/authorize` (+ `/authorize/approve`) for the authorization-code flow with PKCE.
//! Approvals here act as `test-user`; with `auto_approve`, `/authorize` redirects at
//! once as `demo-user`.

use std::time::Instant;

use serde_json::json;
use url::Url;

use crate::Inner;
use crate::config::GRANT_AUTHORIZATION_CODE;
use crate::http::{Request, Response};
use crate::state::{AuthRequest, DEFAULT_SCOPE, DEMO_USER, TEST_USER};
use crate::util::{Params, html_escape, normalize_user_code};

pub(crate) fn handle(inner: &Inner, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/") => page(
            200,
            "qlam-test-idp",
            &format!(
                "<p>A test identity provider. Discovery: <a href=\"{0}/.well-known/openid-configuration\">{0}/.well-known/openid-configuration</a>.</p>",
                html_escape(&inner.base_url)
            ),
        ),
        ("GET", "/activate") => {
            let q = Params::from_query(&req.query);
            activate_form(q.get("user_code").unwrap_or(""))
        }
        ("POST", "/activate") => match Params::from_body(req) {
            Ok(p) => activate(inner, &p),
            Err(e) => page(400, "Bad request", &html_escape(&e)),
        },
        ("GET", "/authorize") => authorize(inner, &Params::from_query(&req.query)),
        ("POST", "/authorize/approve") => match Params::from_body(req) {
            Ok(p) => authorize_decision(inner, &p),
            Err(e) => page(400, "Bad request", &html_escape(&e)),
        },
        (_, "/" | "/activate" | "/authorize" | "/authorize/approve") => Response::json(
            405,
            &json!({"error": "invalid_request", "error_description": "method not allowed"}),
        ),
        _ => Response::json(
            404,
            &json!({"error": "not_found", "error_description": format!("no endpoint at {}", req.path)}),
        ),
    }
}

fn page(status: u16, title: &str, body: &str) -> Response {
    Response::html(
        status,
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body><h1>{t}</h1>\n{body}\n</body></html>\n",
            t = html_escape(title)
        ),
    )
}

fn activate_form(user_code: &str) -> Response {
    page(
        200,
        "Device activation",
        &format!(
            "<form method=\"post\" action=\"/activate\">\n\
             <label>Code <input name=\"user_code\" value=\"{}\" autofocus></label>\n\
             <button name=\"action\" value=\"approve\">Approve</button>\n\
             <button name=\"action\" value=\"deny\">Deny</button>\n</form>",
            html_escape(user_code)
        ),
    )
}

fn activate(inner: &Inner, p: &Params) -> Response {
    let Some(code) = p.get("user_code") else {
        return page(400, "Device activation", "<p>Enter a code.</p>");
    };
    let approve = p.get("action") != Some("deny");
    let user = approve.then_some(TEST_USER);
    let code = normalize_user_code(code);
    if inner.lock().decide_device(Instant::now(), &code, user) {
        let what = if approve { "approved" } else { "denied" };
        page(
            200,
            "Device activation",
            &format!("<p>Device {what}. You can close this window.</p>"),
        )
    } else {
        page(
            400,
            "Device activation",
            "<p>Unknown, expired or already used code.</p>",
        )
    }
}

/// `redirect_uri` with the given query parameters appended.
fn redirect_with(redirect_uri: &Url, params: &[(&str, Option<&str>)]) -> Response {
    let mut url = redirect_uri.clone();
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
    }
    Response::redirect(url.as_str())
}

fn authorize(inner: &Inner, q: &Params) -> Response {
    // Errors about the client or the redirect URI cannot be redirected (RFC 6749 §4.1.2.1).
    let Some(client_id) = q.get("client_id") else {
        return page(400, "Authorization error", "<p>client_id is required.</p>");
    };
    let Some(client) = inner.clients.iter().find(|c| c.client_id == client_id) else {
        return page(400, "Authorization error", "<p>Unknown client.</p>");
    };
    let Some(redirect) = q.get("redirect_uri").and_then(|r| Url::parse(r).ok()) else {
        return page(
            400,
            "Authorization error",
            "<p>redirect_uri is missing or not an absolute URL.</p>",
        );
    };
    let state = q.get("state");
    let fail = |error: &str, description: &str| {
        redirect_with(
            &redirect,
            &[
                ("error", Some(error)),
                ("error_description", Some(description)),
                ("state", state),
            ],
        )
    };
    if !client.allows(GRANT_AUTHORIZATION_CODE) {
        return fail(
            "unauthorized_client",
            "this client may not use the authorization code grant",
        );
    }
    if q.get("response_type") != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    let Some(challenge) = q.get("code_challenge") else {
        return fail("invalid_request", "code_challenge is required (PKCE)");
    };
    if q.get("code_challenge_method") != Some("S256") {
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    let request = AuthRequest {
        client_id: client.client_id.clone(),
        // Kept exactly as sent: the token request must repeat it verbatim.
        redirect_uri: q.get("redirect_uri").unwrap_or_default().into(),
        scope: q.get("scope").unwrap_or(DEFAULT_SCOPE).into(),
        state: state.map(Into::into),
        code_challenge: challenge.into(),
        audience: q.get("audience").map(Into::into),
        organization: q.get("organization").map(Into::into),
    };
    let mut st = inner.lock();
    if st.settings.auto_approve {
        let code = st.issue_code(Instant::now(), request, DEMO_USER);
        return redirect_with(&redirect, &[("code", Some(&code)), ("state", state)]);
    }
    let scope = request.scope.clone();
    let id = st.add_auth_request(request);
    page(
        200,
        "Authorize",
        &format!(
            "<p>Client <b>{}</b> asks for <code>{}</code>.</p>\n\
             <form method=\"post\" action=\"/authorize/approve\">\n\
             <input type=\"hidden\" name=\"request_id\" value=\"{}\">\n\
             <button name=\"action\" value=\"approve\">Approve</button>\n\
             <button name=\"action\" value=\"deny\">Deny</button>\n</form>",
            html_escape(client_id),
            html_escape(&scope),
            html_escape(&id)
        ),
    )
}

fn authorize_decision(inner: &Inner, p: &Params) -> Response {
    let mut st = inner.lock();
    let Some(request) = p.get("request_id").and_then(|id| st.take_auth_request(id)) else {
        return page(
            400,
            "Authorization error",
            "<p>Unknown or already decided request.</p>",
        );
    };
    let Ok(redirect) = Url::parse(&request.redirect_uri) else {
        return page(400, "Authorization error", "<p>Bad redirect_uri.</p>");
    };
    let state = request.state.clone();
    if p.get("action") == Some("deny") {
        return redirect_with(
            &redirect,
            &[
                ("error", Some("access_denied")),
                ("error_description", Some("the user denied the request")),
                ("state", state.as_deref()),
            ],
        );
    }
    let code = st.issue_code(Instant::now(), request, TEST_USER);
    redirect_with(
        &redirect,
        &[("code", Some(&code)), ("state", state.as_deref())],
    )
}
