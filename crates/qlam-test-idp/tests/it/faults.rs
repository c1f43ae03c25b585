use std::time::{Duration, Instant};

use qlam_test_idp::{ClientSpec, Endpoint, Fault, IdpConfig};

use crate::common::*;

fn m2m_idp() -> qlam_test_idp::Idp {
    start(IdpConfig {
        clients: vec![
            ClientSpec::public(CLIENT),
            ClientSpec::confidential("m2m", "pw"),
        ],
        ..IdpConfig::default()
    })
}

const MINT: [(&str, &str); 3] = [
    ("grant_type", "client_credentials"),
    ("client_id", "m2m"),
    ("client_secret", "pw"),
];

#[test]
fn status_fault_answers_json_error_then_clears_itself() {
    let idp = m2m_idp();
    idp.push_fault(Endpoint::Token, Fault::Status(503), Some(1));
    let r = post(&token_url(&idp), &MINT);
    assert_eq!(
        (r.status, r.error().as_str()),
        (503, "temporarily_unavailable")
    );
    assert_eq!(post(&token_url(&idp), &MINT).status, 200);
    let c = idp.counters();
    assert_eq!(
        (
            c.faults_injected,
            c.token_requests,
            c.client_credentials_requests,
            c.client_credentials_ok
        ),
        (1, 2, 2, 1)
    );
    let log = idp.requests();
    assert_eq!(log[0].fault.as_deref(), Some("status 503"));
    assert_eq!(log[0].status, Some(503));
    assert_eq!(log[1].fault, None);
}

#[test]
fn rate_limit_fault_sets_retry_after() {
    let idp = m2m_idp();
    idp.push_fault(
        Endpoint::Token,
        Fault::RateLimit {
            retry_after_secs: 7,
        },
        Some(1),
    );
    let r = post(&token_url(&idp), &MINT);
    assert_eq!((r.status, r.error().as_str()), (429, "too_many_requests"));
    assert_eq!(r.header("retry-after").as_deref(), Some("7"));
}

#[test]
fn latency_fault_delays_a_normal_answer() {
    let idp = m2m_idp();
    idp.push_fault(
        Endpoint::Token,
        Fault::Latency(Duration::from_millis(200)),
        Some(1),
    );
    let t = Instant::now();
    assert_eq!(post(&token_url(&idp), &MINT).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(idp.counters().client_credentials_ok, 1);
}

#[test]
fn drop_fault_closes_the_connection_without_an_answer() {
    let idp = m2m_idp();
    idp.push_fault(Endpoint::Token, Fault::Drop, Some(1));
    assert!(try_post(&token_url(&idp), &MINT).is_err());
    assert_eq!(post(&token_url(&idp), &MINT).status, 200);
    let log = idp.requests();
    assert_eq!(
        (log[0].status, log[0].fault.as_deref()),
        (None, Some("drop"))
    );
    assert_eq!(idp.counters().faults_injected, 1);
}

#[test]
fn malformed_json_fault_answers_200_with_garbage() {
    let idp = m2m_idp();
    idp.push_fault(Endpoint::Token, Fault::MalformedJson, Some(1));
    let r = post(&token_url(&idp), &MINT);
    assert_eq!(r.status, 200);
    assert!(serde_json::from_str::<serde_json::Value>(&r.text).is_err());
}

#[test]
fn faults_apply_in_fifo_order_per_endpoint() {
    let idp = m2m_idp();
    let disco = format!("{}/.well-known/openid-configuration", idp.base_url());
    idp.push_fault(Endpoint::Discovery, Fault::Status(500), Some(2));
    idp.push_fault(Endpoint::Token, Fault::Status(502), Some(1));
    idp.push_fault(Endpoint::Discovery, Fault::Status(503), Some(1));
    assert_eq!(post(&token_url(&idp), &MINT).status, 502);
    assert_eq!(post(&token_url(&idp), &MINT).status, 200);
    assert_eq!(get(&disco).status, 500);
    assert_eq!(get(&disco).status, 500);
    assert_eq!(get(&disco).status, 503);
    assert_eq!(get(&disco).status, 200);
    let c = idp.counters();
    assert_eq!(
        (c.faults_injected, c.discovery, c.token_requests),
        (4, 4, 2)
    );
}

#[test]
fn any_fault_hits_every_oauth_endpoint_until_cleared_but_never_admin() {
    let idp = m2m_idp();
    let b = idp.base_url();
    idp.push_fault(Endpoint::Any, Fault::Status(500), None);
    assert_eq!(
        get(&format!("{b}/.well-known/openid-configuration")).status,
        500
    );
    assert_eq!(post(&token_url(&idp), &MINT).status, 500);
    assert_eq!(
        post(&format!("{b}/oauth/device/code"), &[("client_id", CLIENT)]).status,
        500
    );
    assert_eq!(
        post(&format!("{b}/oauth/revoke"), &[("token", "x")]).status,
        500
    );
    assert_eq!(get(&format!("{b}/admin/counters")).status, 200);
    assert_eq!(idp.counters().faults_injected, 4);
    idp.clear_faults();
    assert_eq!(post(&token_url(&idp), &MINT).status, 200);
    let c = idp.counters();
    assert_eq!(
        (
            c.faults_injected,
            c.discovery,
            c.device_authorization,
            c.revocations,
            c.token_requests
        ),
        (4, 1, 1, 1, 2)
    );
}
