use qlam_test_idp::{DiscoveryMode, IdpConfig};

use crate::common::*;

#[test]
fn openid_mode_serves_openid_configuration_only() {
    let idp = start(IdpConfig::default());
    let b = idp.base_url();
    assert!(b.starts_with("http://127.0.0.1:") && !b.ends_with('/'));
    let r = get(&format!("{b}/.well-known/openid-configuration"));
    assert_eq!(r.status, 200);
    let d = r.json();
    assert_eq!(d["issuer"], format!("{b}/"));
    assert_eq!(d["issuer"], idp.issuer());
    assert_eq!(d["authorization_endpoint"], format!("{b}/authorize"));
    assert_eq!(d["token_endpoint"], format!("{b}/oauth/token"));
    assert_eq!(
        d["device_authorization_endpoint"],
        format!("{b}/oauth/device/code")
    );
    assert_eq!(d["revocation_endpoint"], format!("{b}/oauth/revoke"));
    assert_eq!(d["userinfo_endpoint"], format!("{b}/userinfo"));
    assert_eq!(d["introspection_endpoint"], format!("{b}/oauth/introspect"));
    assert_eq!(d["jwks_uri"], format!("{b}/.well-known/jwks.json"));
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!([
            "client_secret_post",
            "client_secret_basic",
            "private_key_jwt",
            "none"
        ])
    );
    assert_eq!(
        d["token_endpoint_auth_signing_alg_values_supported"],
        serde_json::json!(["RS256", "RS384", "PS256", "ES256"])
    );
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let grants = d["grant_types_supported"].as_array().unwrap();
    assert!(grants.contains(&"urn:ietf:params:oauth:grant-type:device_code".into()));
    assert!(
        d["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&"offline_access".into())
    );

    assert_eq!(
        get(&format!("{b}/.well-known/oauth-authorization-server")).status,
        404
    );
    assert_eq!(
        get(&format!("{b}/.well-known/jwks.json")).json()["keys"],
        serde_json::json!([])
    );
    assert_eq!(idp.counters().discovery, 2);
}

#[test]
fn oauth_only_mode_serves_rfc8414_metadata_only() {
    let idp = start(IdpConfig {
        discovery: DiscoveryMode::OAuthOnly,
        ..IdpConfig::default()
    });
    let b = idp.base_url();
    assert_eq!(
        get(&format!("{b}/.well-known/openid-configuration")).status,
        404
    );
    let r = get(&format!("{b}/.well-known/oauth-authorization-server"));
    assert_eq!(r.status, 200);
    let d = r.json();
    assert_eq!(d["issuer"], format!("{b}/"));
    assert_eq!(d["token_endpoint"], format!("{b}/oauth/token"));
    assert_eq!(
        d["device_authorization_endpoint"],
        format!("{b}/oauth/device/code")
    );
    assert!(d.get("userinfo_endpoint").is_none());
    assert_eq!(idp.counters().discovery, 2);
}

#[test]
fn binds_to_loopback_only() {
    let err = qlam_test_idp::Idp::start(IdpConfig {
        bind: "0.0.0.0:0".into(),
        ..IdpConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn dropping_the_idp_frees_the_port() {
    let idp = start(IdpConfig::default());
    let addr = idp.local_addr();
    // An open keep-alive connection must not keep the server alive.
    let _conn = std::net::TcpStream::connect(addr).unwrap();
    drop(idp);
    assert!(std::net::TcpListener::bind(addr).is_ok());
}
