//! private_key_jwt (RFC 7523 §2.2 and §3): a client authenticates with a JWT it signed with
//! one of its registered keys. An assertion is good once: its `jti` is remembered until its
//! `exp`, and a second use is a replay. Keys can be revoked at run time and the next
//! assertions can be made to fail as replays, so callers can test key rotation and retries.

use std::collections::{HashMap, HashSet};
use std::io;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::Inner;
use crate::config::{ClientKey, ClientSpec, SigningAlg};
use crate::error::OAuthError;
use crate::util::unix_now;

/// An assertion may expire at most this long after it is presented.
pub(crate) const MAX_LIFETIME_SECS: u64 = 300;
/// How far ahead of the IdP's clock `iat` and `nbf` may be.
pub(crate) const CLOCK_SKEW_SECS: u64 = 60;
/// Name of the fault recorded for a rejection forced by [`AssertionState::reject_next`].
pub(crate) const FORCED_REJECTION: &str = "reject_assertion";

/// A registered public key, parsed once at start.
struct VerifyingKey {
    alg: SigningAlg,
    kid: Option<String>,
    /// PKCS#1 RSAPublicKey DER for RSA, the uncompressed point for P-256.
    key: Vec<u8>,
}

/// The parsed public keys of every client, by client id.
#[derive(Default)]
pub(crate) struct KeyRing {
    clients: HashMap<String, Vec<VerifyingKey>>,
}

impl KeyRing {
    /// Parses every client's keys; a key that does not parse is an `InvalidInput` error.
    pub(crate) fn new(clients: &[ClientSpec]) -> io::Result<KeyRing> {
        let mut ring = KeyRing::default();
        for c in clients {
            for (i, k) in c.jwks.iter().enumerate() {
                let key = decoding_key(k).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "client {:?}, key {} ({}{}): {e}",
                            c.client_id,
                            i + 1,
                            k.alg,
                            k.kid
                                .as_deref()
                                .map(|kid| format!(", kid {kid:?}"))
                                .unwrap_or_default()
                        ),
                    )
                })?;
                ring.clients
                    .entry(c.client_id.clone())
                    .or_default()
                    .push(VerifyingKey {
                        alg: k.alg,
                        kid: k.kid.clone(),
                        key,
                    });
            }
        }
        Ok(ring)
    }

    /// Whether `client_id` has a key with this `kid`.
    pub(crate) fn has_kid(&self, client_id: &str, kid: &str) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|keys| keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
    }
}

fn verification(alg: SigningAlg) -> &'static dyn signature::VerificationAlgorithm {
    match alg {
        SigningAlg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        SigningAlg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        SigningAlg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
        SigningAlg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
    }
}

/// The body of the first PEM block labelled `label`.
fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// One DER element at the start of `der`: (tag, content, rest).
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (
            rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize),
            &rest[n..],
        )
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subjectPublicKey bits of an SPKI structure.
fn spki_key(der: &[u8]) -> Option<Vec<u8>> {
    let (0x30, spki, _) = der_element(der)? else {
        return None;
    };
    let (0x30, _algorithm, rest) = der_element(spki)? else {
        return None;
    };
    let (0x03, bits, _) = der_element(rest)? else {
        return None;
    };
    let (&unused, key) = bits.split_first()?;
    (unused == 0).then(|| key.to_vec())
}

fn decoding_key(k: &ClientKey) -> Result<Vec<u8>, String> {
    let pem = k.public_key_pem.trim();
    if k.alg == SigningAlg::Es256 {
        let point = pem_block(pem, "PUBLIC KEY")
            .and_then(|d| spki_key(&d))
            .ok_or_else(|| "not an EC public key in SPKI PEM".to_string())?;
        // The uncompressed point: 0x04, then x and y of 32 bytes.
        if point.len() != 65 || point[0] != 4 {
            return Err("ES256 needs a P-256 key".into());
        }
        Ok(point)
    } else {
        pem_block(pem, "PUBLIC KEY")
            .and_then(|d| spki_key(&d))
            .or_else(|| pem_block(pem, "RSA PUBLIC KEY"))
            .filter(|k| der_element(k).is_some_and(|(tag, _, _)| tag == 0x30))
            .ok_or_else(|| "not an RSA public key in SPKI or PKCS#1 PEM".to_string())
    }
}

/// Replay memory, revoked keys and forced rejections; kept in the IdP's state.
#[derive(Debug, Default)]
pub(crate) struct AssertionState {
    /// `(client id, jti)` of accepted assertions → their `exp`, kept until then.
    seen: HashMap<(String, String), u64>,
    /// Size of `seen` at which expired entries are next swept out.
    sweep_at: usize,
    /// `(client id, kid)` of revoked keys.
    revoked: HashSet<(String, String)>,
    /// How many more otherwise-valid assertions to reject as replays.
    reject_next: u32,
}

impl AssertionState {
    /// Remembers a `jti` until `exp`; false if it is in use already (a replay).
    fn remember(&mut self, client_id: &str, jti: &str, exp: u64, now: u64) -> bool {
        let key = (client_id.to_string(), jti.to_string());
        if self.seen.get(&key).is_some_and(|&e| e > now) {
            return false;
        }
        if self.seen.len() >= self.sweep_at {
            self.seen.retain(|_, e| *e > now);
            self.sweep_at = (self.seen.len() * 2).max(1024);
        }
        self.seen.insert(key, exp);
        true
    }

    /// Revokes a key of a client from now on.
    pub(crate) fn revoke(&mut self, client_id: &str, kid: &str) {
        self.revoked.insert((client_id.into(), kid.into()));
    }

    fn revoked_kids(&self, client_id: &str) -> Vec<String> {
        self.revoked
            .iter()
            .filter(|(c, _)| c == client_id)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Rejects the next `n` assertions that would be accepted (0: none).
    pub(crate) fn reject_next(&mut self, n: u32) {
        self.reject_next = n;
    }

    fn take_forced_rejection(&mut self) -> bool {
        let forced = self.reject_next > 0;
        self.reject_next = self.reject_next.saturating_sub(1);
        forced
    }
}

/// The client an assertion claims to come from (`sub`, else `iss`), unverified; for
/// finding its keys when the request carries no `client_id`.
pub(crate) fn claimed_client(assertion: &str) -> Option<String> {
    let payload = assertion.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    ["sub", "iss"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(Value::as_str).map(String::from))
}

/// Authenticates `client_id` (the request's, else the assertion's) by its assertion.
/// Counts the attempt, and its rejection.
pub(crate) fn authenticate<'a>(
    inner: &'a Inner,
    client_id: Option<&str>,
    assertion: &str,
) -> Result<&'a ClientSpec, OAuthError> {
    inner.lock().counters.client_assertions += 1;
    let result = authenticate_uncounted(inner, client_id, assertion);
    if result.is_err() {
        inner.lock().counters.client_assertions_rejected += 1;
    }
    result
}

fn authenticate_uncounted<'a>(
    inner: &'a Inner,
    client_id: Option<&str>,
    assertion: &str,
) -> Result<&'a ClientSpec, OAuthError> {
    let id = client_id.ok_or_else(|| {
        OAuthError::invalid_client("no client_id was sent and the assertion has no sub or iss")
    })?;
    let client = inner
        .clients
        .iter()
        .find(|c| c.client_id == id)
        .ok_or_else(|| OAuthError::invalid_client(format!("unknown client {id:?}")))?;
    let keys = match inner.keys.clients.get(id) {
        Some(keys) if !keys.is_empty() => keys,
        _ => {
            return Err(OAuthError::invalid_client(format!(
                "client {id:?} has no keys registered for private_key_jwt"
            )));
        }
    };
    let revoked = inner.lock().assertions.revoked_kids(id);
    let now = unix_now();
    let audiences = [
        format!("{}/", inner.base_url),
        format!("{}/oauth/token", inner.base_url),
    ];
    // Signatures are checked outside the state lock; only the replay check needs it.
    let checked = check(keys, &revoked, id, assertion, &audiences, now)
        .map_err(|e| OAuthError::invalid_client(format!("client assertion rejected: {e}")))?;
    let mut st = inner.lock();
    if !st.assertions.remember(id, &checked.jti, checked.exp, now) {
        st.counters.assertion_replays += 1;
        return Err(OAuthError::invalid_client(
            "assertion replay detected: this jti has been used already; sign a fresh assertion",
        ));
    }
    if st.assertions.take_forced_rejection() {
        st.counters.faults_injected += 1;
        return Err(
            OAuthError::invalid_client("assertion replay detected").injected(FORCED_REJECTION)
        );
    }
    Ok(client)
}

/// What an accepted assertion leaves to remember.
struct Checked {
    jti: String,
    exp: u64,
}

/// Everything but the replay check: header, key choice, signature, claims. The error is a
/// description for `error_description` (no assertion content beyond claim values).
fn check(
    keys: &[VerifyingKey],
    revoked: &[String],
    client_id: &str,
    assertion: &str,
    audiences: &[String; 2],
    now: u64,
) -> Result<Checked, String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return Err("not a signed JWT (three dot-separated base64url parts)".into());
    }
    let header = decode_object(parts[0]).ok_or("the JOSE header is not base64url JSON")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("the header has no alg")?;
    if alg.eq_ignore_ascii_case("none") {
        return Err("alg \"none\" is not accepted: the assertion must be signed".into());
    }
    let alg = SigningAlg::from_name(alg)
        .ok_or_else(|| format!("alg {alg:?} is not supported (RS256, RS384, PS256 or ES256)"))?;
    let is_revoked = |k: &VerifyingKey| k.kid.as_ref().is_some_and(|kid| revoked.contains(kid));
    let candidates: Vec<&VerifyingKey> = match header.get("kid").and_then(Value::as_str) {
        Some(kid) => {
            let named: Vec<_> = keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if !named.is_empty() && named.iter().all(|k| is_revoked(k)) {
                return Err(format!(
                    "key {kid:?} of client {client_id:?} has been revoked"
                ));
            }
            if named.is_empty() {
                // Keys registered without a kid may match any kid.
                let unnamed: Vec<_> = keys.iter().filter(|k| k.kid.is_none()).collect();
                if unnamed.is_empty() {
                    return Err(format!("client {client_id:?} has no key with kid {kid:?}"));
                }
                unnamed
            } else {
                named.into_iter().filter(|k| !is_revoked(k)).collect()
            }
        }
        None => {
            let live: Vec<_> = keys.iter().filter(|k| !is_revoked(k)).collect();
            if live.is_empty() {
                return Err(format!(
                    "every key of client {client_id:?} has been revoked"
                ));
            }
            if !live.iter().any(|k| k.alg == alg) && keys.iter().any(|k| k.alg == alg) {
                return Err(format!(
                    "every {alg} key of client {client_id:?} has been revoked"
                ));
            }
            live
        }
    };
    let fitting: Vec<&VerifyingKey> = candidates
        .iter()
        .copied()
        .filter(|k| k.alg == alg)
        .collect();
    if fitting.is_empty() {
        let mut algs: Vec<&str> = candidates.iter().map(|k| k.alg.name()).collect();
        algs.dedup();
        return Err(format!(
            "alg {alg} does not match the client's key (registered for {})",
            algs.join(", ")
        ));
    }
    let mut parts = assertion.rsplitn(2, '.');
    let (sig_b64, signing_input) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig_b64.trim_end_matches('=')) else {
        return Err("the signature is not base64url".into());
    };
    let verified = fitting.iter().any(|k| {
        UnparsedPublicKey::new(verification(alg), &k.key)
            .verify(signing_input.as_bytes(), &sig)
            .is_ok()
    });
    if !verified {
        return Err("the signature does not verify with the client's registered key".into());
    }
    let Some(claims) = signing_input.split('.').nth(1).and_then(decode_object) else {
        return Err("the claims are not a base64url JSON object".into());
    };
    check_claims(&claims, client_id, audiences, now)
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A NumericDate claim, whole seconds (fractions dropped).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| *n >= 0.0)
            .map(|n| Some(n as u64))
            .ok_or_else(|| format!("{name} is not a NumericDate")),
    }
}

fn check_claims(
    claims: &Map<String, Value>,
    client_id: &str,
    audiences: &[String; 2],
    now: u64,
) -> Result<Checked, String> {
    for name in ["iss", "sub"] {
        match claims.get(name) {
            None => return Err(format!("{name} is missing; it must be the client id")),
            Some(Value::String(s)) if s == client_id => {}
            Some(other) => {
                return Err(format!(
                    "{name} must be the client id {client_id:?}, not {other}"
                ));
            }
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    if !aud_ok {
        let got = claims.get("aud").map_or("nothing".into(), Value::to_string);
        return Err(format!(
            "aud must be the issuer {:?} (or the token endpoint {:?}), not {got}",
            audiences[0], audiences[1]
        ));
    }
    let exp = numeric_date(claims, "exp")?.ok_or("exp is missing")?;
    if exp <= now {
        return Err(format!("the assertion expired {} s ago", now - exp));
    }
    if exp > now + MAX_LIFETIME_SECS {
        return Err(format!(
            "exp is {} s ahead; at most {MAX_LIFETIME_SECS} s is accepted",
            exp - now
        ));
    }
    if let Some(iat) = numeric_date(claims, "iat")?
        && iat > now + CLOCK_SKEW_SECS
    {
        return Err(format!("iat is {} s in the future", iat - now));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now + CLOCK_SKEW_SECS
    {
        return Err(format!(
            "the assertion is not valid for another {} s (nbf)",
            nbf - now
        ));
    }
    let jti = match claims.get("jti") {
        Some(Value::String(j)) if !j.is_empty() => j.clone(),
        Some(_) => return Err("jti must be a non-empty string".into()),
        None => return Err("jti is missing; each assertion needs a unique jti".into()),
    };
    Ok(Checked { jti, exp })
}
