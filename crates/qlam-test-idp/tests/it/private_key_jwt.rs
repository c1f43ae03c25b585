//! private_key_jwt client authentication (RFC 7523): accepted algorithms and key formats,
//! every rejection, replay detection, key rotation and the fault seams for it.

use jsonwebtoken::Algorithm;
use qlam_test_idp::{
    ClientKey, ClientSpec, Counters, Idp, IdpConfig, JWT_BEARER_ASSERTION_TYPE, SigningAlg,
};
use serde_json::{Value, json};

use crate::common::*;
use crate::keys::*;

const M2M: &str = "m2m-jwt";

/// One client with a key for each algorithm, each with a kid.
fn every_alg() -> IdpConfig {
    let k = keys();
    IdpConfig {
        clients: vec![
            ClientSpec::public(CLIENT),
            ClientSpec::private_key_jwt(
                M2M,
                vec![
                    k.rsa.client_key(SigningAlg::Rs256, Some("rs256")),
                    k.rsa_pkcs1.client_key(SigningAlg::Rs384, Some("rs384")),
                    k.rsa.client_key(SigningAlg::Ps256, Some("ps256")),
                    k.ec.client_key(SigningAlg::Es256, Some("es256")),
                ],
            ),
        ],
        ..IdpConfig::default()
    }
}

/// A client-credentials request authenticated by `assertion`, plus `extra` parameters.
fn mint(idp: &Idp, assertion: &str, extra: &[(&str, &str)]) -> Reply {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    form.extend_from_slice(extra);
    post(&token_url(idp), &form)
}

/// A fresh RS256 assertion for [`M2M`] signed with the `rs256` key.
fn rs256(idp: &Idp) -> String {
    sign(
        &keys().rsa,
        Algorithm::RS256,
        Some("rs256"),
        &claims(idp, M2M),
    )
}

fn assert_invalid_client(r: &Reply, needle: &str) {
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "invalid_client"),
        "{}",
        r.text
    );
    let d = r.json()["error_description"].as_str().unwrap().to_string();
    assert!(d.contains(needle), "{needle:?} not in {d:?}");
}

fn assertion_counters(c: &Counters) -> (u64, u64, u64) {
    (
        c.client_assertions,
        c.client_assertions_rejected,
        c.assertion_replays,
    )
}

#[test]
fn every_algorithm_and_key_format_is_accepted() {
    let idp = start(every_alg());
    let k = keys();
    let cases = [
        (&k.rsa, Algorithm::RS256, "rs256"),
        (&k.rsa_pkcs1, Algorithm::RS384, "rs384"),
        (&k.rsa, Algorithm::PS256, "ps256"),
        (&k.ec, Algorithm::ES256, "es256"),
    ];
    for (key, alg, kid) in cases {
        let a = sign(key, alg, Some(kid), &claims(&idp, M2M));
        let r = mint(&idp, &a, &[("audience", "https://api.example")]);
        assert_eq!(r.status, 200, "{kid}: {}", r.text);
        assert!(idp.introspect(str_of(&r.json(), "access_token")));
        // Without a kid every key is tried; with the client_id in the body too.
        let a = sign(key, alg, None, &claims(&idp, M2M));
        let r = mint(&idp, &a, &[("client_id", M2M)]);
        assert_eq!(r.status, 200, "{kid} without kid: {}", r.text);
    }
    // The token endpoint is an accepted audience too (Auth0 accepts it); so is an array.
    let mut c = claims(&idp, M2M);
    c["aud"] = json!(token_url(&idp));
    let r = mint(
        &idp,
        &sign(&k.rsa, Algorithm::RS256, Some("rs256"), &c),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let mut c = claims(&idp, M2M);
    c["aud"] = json!(["https://elsewhere.example/", idp.issuer()]);
    let r = mint(
        &idp,
        &sign(&k.rsa, Algorithm::RS256, Some("rs256"), &c),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text);

    let c = idp.counters();
    assert_eq!(assertion_counters(&c), (10, 0, 0));
    assert_eq!(
        (
            c.client_credentials_requests,
            c.client_credentials_ok,
            c.token_requests
        ),
        (10, 10, 10)
    );
    let log = idp.requests();
    assert!(log.iter().all(|r| r.auth_method == "private_key_jwt"));
    assert_eq!(
        log[0]
            .values
            .get("client_assertion_type")
            .map(String::as_str),
        Some(JWT_BEARER_ASSERTION_TYPE)
    );
    assert!(log[0].params.contains(&"client_assertion".to_string()));
    let logged = serde_json::to_string(&log).unwrap();
    assert!(
        !logged.contains(&rs256(&idp)[..40]),
        "no assertion in the log"
    );
}

#[test]
fn bad_assertions_are_invalid_client() {
    let idp = start(every_alg());
    let k = keys();
    let good = |c: &Value| sign(&k.rsa, Algorithm::RS256, Some("rs256"), c);
    let with = |name: &str, v: Value| {
        let mut c = claims(&idp, M2M);
        c[name] = v;
        c
    };
    let without = |name: &str| {
        let mut c = claims(&idp, M2M);
        c.as_object_mut().unwrap().remove(name);
        c
    };
    let now = now();
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(&idp, M2M))
    );
    // A PS256 signature made with the key registered for RS256 only (kid rs256).
    let mismatched = sign(&k.rsa, Algorithm::PS256, Some("rs256"), &claims(&idp, M2M));
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims(&idp, M2M),
        &jsonwebtoken::EncodingKey::from_secret(b"guessable").unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong key",
            sign(
                &k.rsa_other,
                Algorithm::RS256,
                Some("rs256"),
                &claims(&idp, M2M),
            ),
            "signature does not verify",
        ),
        (
            "wrong key, no kid",
            sign(&k.rsa_other, Algorithm::RS256, None, &claims(&idp, M2M)),
            "signature does not verify",
        ),
        (
            "aud without the trailing slash",
            good(&with("aud", json!(idp.base_url()))),
            "aud must be the issuer",
        ),
        ("no aud", good(&without("aud")), "aud must be the issuer"),
        ("expired", good(&with("exp", json!(now - 5))), "expired"),
        (
            "exp too far ahead",
            good(&with("exp", json!(now + 600))),
            "at most 300 s",
        ),
        ("no exp", good(&without("exp")), "exp is missing"),
        (
            "iat in the future",
            good(&with("iat", json!(now + 120))),
            "iat is",
        ),
        ("no jti", good(&without("jti")), "jti is missing"),
        ("empty jti", good(&with("jti", json!(""))), "jti must be"),
        (
            "iss differs",
            good(&with("iss", json!("someone-else"))),
            "iss must be the client id",
        ),
        ("no iss", good(&without("iss")), "iss is missing"),
        ("alg none", unsigned, "\"none\" is not accepted"),
        ("alg mismatch", mismatched, "does not match"),
        ("HS256", hmac, "not supported"),
        (
            "unknown kid",
            sign(&k.rsa, Algorithm::RS256, Some("nope"), &claims(&idp, M2M)),
            "no key with kid",
        ),
    ];
    let n = cases.len() as u64;
    for (what, assertion, needle) in &cases {
        let r = mint(&idp, assertion, &[]);
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_invalid_client(&r, needle);
    }
    // sub is what names the client when the body has no client_id.
    let r = mint(&idp, &good(&with("sub", json!("someone-else"))), &[]);
    assert_invalid_client(&r, "unknown client");
    let r = mint(
        &idp,
        &good(&with("sub", json!("someone-else"))),
        &[("client_id", M2M)],
    );
    assert_invalid_client(&r, "differs");
    let r = mint(&idp, "not-a-jwt", &[]);
    assert_invalid_client(&r, "no sub or iss");
    let r = mint(&idp, "not-a-jwt", &[("client_id", M2M)]);
    assert_invalid_client(&r, "not a signed JWT");

    // Replay: the same assertion twice.
    let a = rs256(&idp);
    assert_eq!(mint(&idp, &a, &[]).status, 200);
    let r = mint(&idp, &a, &[]);
    assert_invalid_client(&r, "replay");
    // The same jti in a newly signed assertion is a replay too.
    let c = claims(&idp, M2M);
    assert_eq!(mint(&idp, &good(&c), &[]).status, 200);
    let mut again = c.clone();
    again["exp"] = json!(now + 90);
    assert_invalid_client(&mint(&idp, &good(&again), &[]), "replay");

    let c = idp.counters();
    // The differing client_id is refused before the assertion is checked.
    assert_eq!(assertion_counters(&c), (n + 7, n + 5, 2));
    assert_eq!(
        (c.client_credentials_requests, c.client_credentials_ok),
        (n + 8, 2)
    );
    assert_eq!(c.faults_injected, 0);
    assert!(
        idp.requests()
            .iter()
            .all(|r| r.auth_method == "private_key_jwt")
    );
}

#[test]
fn client_authentication_rules() {
    let k = keys();
    let idp = start(IdpConfig {
        clients: vec![
            ClientSpec::public(CLIENT),
            ClientSpec::private_key_jwt(M2M, vec![k.ec.client_key(SigningAlg::Es256, None)]),
            ClientSpec::confidential("both", "pw")
                .with_key(k.rsa.client_key(SigningAlg::Rs256, Some("k"))),
            ClientSpec::confidential("secret-only", "pw"),
        ],
        ..IdpConfig::default()
    });
    let url = token_url(&idp);
    let cc = ("grant_type", "client_credentials");
    let es = |client: &str| sign(&k.ec, Algorithm::ES256, None, &claims(&idp, client));
    // A key-only client: no secret, no anonymous requests.
    let r = post(&url, &[cc, ("client_id", M2M), ("client_secret", "x")]);
    assert_invalid_client(&r, "private_key_jwt");
    let r = post(&url, &[cc, ("client_id", M2M)]);
    assert_invalid_client(&r, "private_key_jwt");
    // Assertion plus secret, or Basic: two methods.
    let a = es(M2M);
    let r = post(
        &url,
        &[
            cc,
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", &a),
            ("client_secret", "x"),
        ],
    );
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_request"));
    let r = post_basic(
        &url,
        M2M,
        "x",
        &[
            cc,
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", &a),
        ],
    );
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_request"));
    // Missing or wrong assertion type.
    let r = post(&url, &[cc, ("client_assertion", &a)]);
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_request"));
    let r = post(
        &url,
        &[
            cc,
            ("client_assertion_type", "urn:example:saml"),
            ("client_assertion", &a),
        ],
    );
    assert_invalid_client(&r, "unsupported client_assertion_type");
    // None of those consumed the assertion.
    assert_eq!(mint(&idp, &a, &[]).status, 200);
    // A client with a secret and a key may use either.
    let both = sign(&k.rsa, Algorithm::RS256, Some("k"), &claims(&idp, "both"));
    assert_eq!(mint(&idp, &both, &[]).status, 200);
    assert_eq!(
        post(&url, &[cc, ("client_id", "both"), ("client_secret", "pw")]).status,
        200
    );
    // A client without keys cannot use an assertion.
    let r = mint(&idp, &es("secret-only"), &[]);
    assert_invalid_client(&r, "no keys registered");
    // A public client may not use private_key_jwt either.
    let r = mint(&idp, &es(CLIENT), &[]);
    assert_invalid_client(&r, "no keys registered");

    // Revocation accepts private_key_jwt; with a bad assertion it is invalid_client.
    let token = str_of(&mint(&idp, &es(M2M), &[]).json(), "access_token").to_string();
    let revoke = format!("{}/oauth/revoke", idp.base_url());
    let r = post(
        &revoke,
        &[
            ("token", &token),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", &a),
        ],
    );
    assert_invalid_client(&r, "replay");
    assert!(idp.introspect(&token));
    let r = post(
        &revoke,
        &[
            ("token", &token),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", &es(M2M)),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!idp.introspect(&token));
    let c = idp.counters();
    assert_eq!(assertion_counters(&c), (7, 3, 1));
    assert_eq!(c.client_credentials_ok, 4);
}

#[test]
fn key_rotation_and_revoked_keys() {
    let k = keys();
    let idp = start(IdpConfig {
        clients: vec![ClientSpec::private_key_jwt(
            M2M,
            vec![
                k.rsa.client_key(SigningAlg::Rs256, Some("old")),
                k.ec.client_key(SigningAlg::Es256, Some("new")),
            ],
        )],
        ..IdpConfig::default()
    });
    let old = |kid: Option<&str>| sign(&k.rsa, Algorithm::RS256, kid, &claims(&idp, M2M));
    let new = |kid: Option<&str>| sign(&k.ec, Algorithm::ES256, kid, &claims(&idp, M2M));
    assert_eq!(mint(&idp, &old(Some("old")), &[]).status, 200);
    assert_eq!(mint(&idp, &new(Some("new")), &[]).status, 200);
    assert_eq!(mint(&idp, &old(None), &[]).status, 200);

    assert!(!idp.revoke_client_key(M2M, "nope"));
    assert!(!idp.revoke_client_key("nobody", "old"));
    assert!(idp.revoke_client_key(M2M, "old"));
    assert_invalid_client(&mint(&idp, &old(Some("old")), &[]), "revoked");
    assert_invalid_client(&mint(&idp, &old(None), &[]), "RS256 key of client");
    // A caller configured with both keys falls back to the second.
    assert_eq!(mint(&idp, &new(Some("new")), &[]).status, 200);
    assert_eq!(mint(&idp, &new(None), &[]).status, 200);

    // Over HTTP.
    let admin = format!("{}/admin/revoke-client-key", idp.base_url());
    let r = post_json(&admin, &json!({"client_id": M2M, "kid": "unknown"}));
    assert_eq!(r.status, 404);
    let r = post(&admin, &[("client_id", M2M)]);
    assert_eq!(r.status, 400);
    let r = post_json(&admin, &json!({"client_id": M2M, "kid": "new"}));
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
    assert_invalid_client(&mint(&idp, &new(Some("new")), &[]), "revoked");
    assert_invalid_client(&mint(&idp, &new(None), &[]), "every key");
    let c = idp.counters();
    assert_eq!(assertion_counters(&c), (9, 4, 0));
    assert_eq!(c.client_credentials_ok, 5);
}

#[test]
fn forced_replay_rejections_make_callers_sign_afresh() {
    let idp = start(every_alg());
    idp.reject_next_assertions(2);
    let first = rs256(&idp);
    let r = mint(&idp, &first, &[]);
    assert_invalid_client(&r, "assertion replay detected");
    let r = mint(&idp, &rs256(&idp), &[]);
    assert_invalid_client(&r, "assertion replay detected");
    // An invalid assertion meanwhile gets its own answer and leaves the count alone.
    idp.reject_next_assertions(1);
    let mut c = claims(&idp, M2M);
    c["aud"] = json!("https://wrong.example/");
    let bad = sign(&keys().rsa, Algorithm::RS256, Some("rs256"), &c);
    assert_invalid_client(&mint(&idp, &bad, &[]), "aud must be");
    assert_invalid_client(&mint(&idp, &rs256(&idp), &[]), "replay detected");
    // A fresh assertion now works; the rejected one stays used.
    assert_eq!(mint(&idp, &rs256(&idp), &[]).status, 200);
    assert_invalid_client(&mint(&idp, &first, &[]), "has been used already");

    let log = idp.requests();
    let faults: Vec<_> = log.iter().map(|r| r.fault.as_deref()).collect();
    assert_eq!(
        faults,
        [
            Some("reject_assertion"),
            Some("reject_assertion"),
            None,
            Some("reject_assertion"),
            None,
            None
        ]
    );
    assert!(log.iter().all(|r| r.auth_method == "private_key_jwt"));
    let c = idp.counters();
    assert_eq!(assertion_counters(&c), (6, 5, 1));
    assert_eq!((c.faults_injected, c.client_credentials_ok), (3, 1));

    // Over HTTP; 0 cancels.
    let admin = format!("{}/admin/reject-assertions", idp.base_url());
    assert_eq!(post_json(&admin, &json!({"count": 1})).status, 200);
    assert_invalid_client(&mint(&idp, &rs256(&idp), &[]), "replay detected");
    assert_eq!(post(&admin, &[("count", "3")]).status, 200);
    assert_eq!(post(&admin, &[("count", "0")]).status, 200);
    assert_eq!(mint(&idp, &rs256(&idp), &[]).status, 200);
    assert_eq!(post(&admin, &[("count", "-1")]).status, 400);
    assert_eq!(post(&admin, &[]).status, 400);
    assert_eq!(idp.counters().faults_injected, 4);
}

#[test]
fn client_credentials_with_audience_organization_scope_and_quota() {
    let idp = start(IdpConfig {
        m2m_quota: Some(2),
        ..every_alg()
    });
    let extra = [
        ("audience", "https://api.example"),
        ("organization", "org_123"),
        ("scope", "read:jobs write:jobs"),
    ];
    let r = mint(&idp, &rs256(&idp), &extra);
    assert_eq!(r.status, 200, "{}", r.text);
    let t = r.json();
    assert_eq!(t["scope"], "read:jobs write:jobs");
    assert_eq!(t["token_type"], "Bearer");
    assert!(t.get("refresh_token").is_none());
    let info = post(
        &format!("{}/oauth/introspect", idp.base_url()),
        &[("token", str_of(&t, "access_token"))],
    )
    .json();
    assert_eq!(info["aud"], "https://api.example");
    assert_eq!(info["org_id"], "org_123");
    assert_eq!(info["sub"], format!("{M2M}@clients"));
    assert_eq!(info["client_id"], M2M);
    assert_eq!(info["scope"], "read:jobs write:jobs");
    let log = idp.requests();
    for (name, value) in extra {
        assert_eq!(log[0].values.get(name).map(String::as_str), Some(value));
    }

    assert_eq!(mint(&idp, &rs256(&idp), &[]).status, 200);
    let r = mint(&idp, &rs256(&idp), &[]);
    assert_eq!((r.status, r.error().as_str()), (429, "too_many_requests"));
    let c = idp.counters();
    assert_eq!(
        (c.client_credentials_requests, c.client_credentials_ok),
        (3, 2)
    );
    // The client authenticated even though the quota refused the mint.
    assert_eq!(assertion_counters(&c), (3, 0, 0));
}

#[test]
fn keys_that_do_not_fit_their_algorithm_are_refused_at_start() {
    let k = keys();
    let start_with = |key: ClientKey| {
        Idp::start(IdpConfig {
            clients: vec![ClientSpec::private_key_jwt(M2M, vec![key])],
            ..IdpConfig::default()
        })
    };
    for bad in [
        ClientKey::new(SigningAlg::Es256, k.rsa.public_pem.clone()),
        ClientKey::new(SigningAlg::Es256, k.ec_p384.public_pem.clone()),
        ClientKey::new(SigningAlg::Rs256, k.ec.public_pem.clone()),
        ClientKey::new(
            SigningAlg::Rs256,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ),
        ClientKey::new(SigningAlg::Ps256, "not a key"),
    ] {
        let e = start_with(bad.clone()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        assert!(e.to_string().contains(M2M), "{e}");
    }
    assert!(start_with(k.rsa_pkcs1.client_key(SigningAlg::Ps256, None)).is_ok());
    assert_eq!("es256".parse::<SigningAlg>(), Ok(SigningAlg::Es256));
    assert!("HS256".parse::<SigningAlg>().is_err());
}
