//! Helpers: an HTTP client that returns every status, and login shortcuts.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use qlam_test_idp::{DEVICE_GRANT_URN, Idp, IdpConfig};
use serde_json::Value;

pub(crate) const CLIENT: &str = "qlam-hpc-test";

/// A fresh agent per request: no pooled connection, so no silent retry can hide a fault.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) text: String,
    pub(crate) headers: ureq::http::HeaderMap,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// The `error` of an OAuth error answer.
    pub(crate) fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

fn reply(mut r: ureq::http::Response<ureq::Body>) -> Reply {
    Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        text: r.body_mut().read_to_string().unwrap(),
    }
}

pub(crate) fn try_post(url: &str, form: &[(&str, &str)]) -> Result<Reply, ureq::Error> {
    agent().post(url).send_form(form.iter().copied()).map(reply)
}

pub(crate) fn post(url: &str, form: &[(&str, &str)]) -> Reply {
    try_post(url, form).unwrap()
}

pub(crate) fn post_json(url: &str, body: &Value) -> Reply {
    reply(agent().post(url).send_json(body).unwrap())
}

pub(crate) fn post_basic(url: &str, id: &str, secret: &str, form: &[(&str, &str)]) -> Reply {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let cred = STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
    reply(
        agent()
            .post(url)
            .header("Authorization", &format!("Basic {cred}"))
            .send_form(form.iter().copied())
            .unwrap(),
    )
}

pub(crate) fn try_get(url: &str) -> Result<Reply, ureq::Error> {
    agent().get(url).call().map(reply)
}

pub(crate) fn get(url: &str) -> Reply {
    try_get(url).unwrap()
}

pub(crate) fn get_bearer(url: &str, token: &str) -> Reply {
    reply(
        agent()
            .get(url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap(),
    )
}

/// Defaults, but no polling interval so tests may poll at once.
pub(crate) fn fast() -> IdpConfig {
    IdpConfig {
        device_interval: Some(0),
        ..IdpConfig::default()
    }
}

pub(crate) fn start(cfg: IdpConfig) -> Idp {
    Idp::start(cfg).unwrap()
}

pub(crate) fn token_url(idp: &Idp) -> String {
    format!("{}/oauth/token", idp.base_url())
}

pub(crate) fn device_authorize(idp: &Idp, scope: &str) -> Value {
    let r = post(
        &format!("{}/oauth/device/code", idp.base_url()),
        &[("client_id", CLIENT), ("scope", scope)],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

pub(crate) fn poll(idp: &Idp, device_code: &str) -> Reply {
    post(
        &token_url(idp),
        &[
            ("grant_type", DEVICE_GRANT_URN),
            ("device_code", device_code),
            ("client_id", CLIENT),
        ],
    )
}

/// A full device login approved through the API; returns the token response.
pub(crate) fn login(idp: &Idp) -> Value {
    let d = device_authorize(idp, "openid profile email offline_access");
    assert!(idp.approve(d["user_code"].as_str().unwrap()));
    let r = poll(idp, d["device_code"].as_str().unwrap());
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

pub(crate) fn refresh(idp: &Idp, rt: &str) -> Reply {
    post(
        &token_url(idp),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", CLIENT),
        ],
    )
}

pub(crate) fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no string {k} in {v}"))
}

/// The claims of a JWT, without verification.
pub(crate) fn jwt_claims(jwt: &str) -> Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three segments: {jwt}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "none");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}
