//! Client authentication at the token endpoint: `client_secret_post`, `client_secret_basic`
//! and `private_key_jwt` (RFC 7523) with a fresh assertion per request (`iss` = `sub` =
//! client id, `aud` = the issuer exactly as discovery reports it unless configured
//! otherwise, unique `jti`, `exp` within 60 s). Keys and secrets stay in [`Secret`]s and
//! key files that others can read are refused.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// How the client proves who it is.
pub enum ClientAuth {
    /// A public client: `client_id` only.
    None,
    /// The secret in the form body.
    SecretPost(Secret),
    /// The secret in an HTTP Basic header.
    SecretBasic(Secret),
    /// Signed assertions; the first key is used, the others when it is rejected.
    PrivateKeyJwt(Vec<SigningKey>),
}

/// A JWS algorithm qlam-hpc signs client assertions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::PS256 => "PS256",
            Algorithm::ES256 => "ES256",
        }
    }
}

enum KeyPair {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
}

/// A private key for `private_key_jwt`.
pub struct SigningKey {
    /// Where it came from (for messages).
    pub path: PathBuf,
    /// The JWS algorithm.
    pub alg: Algorithm,
    /// The `kid` header, if configured.
    pub kid: Option<String>,
    key: KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("path", &self.path)
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish()
    }
}

/// Parse an algorithm name (RS256, RS384, PS256, ES256).
pub fn parse_alg(name: &str) -> Result<Algorithm> {
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "PS256" => Ok(Algorithm::PS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(Error::config(format!(
            "private_key_alg {other:?} is not one of RS256, RS384, PS256, ES256"
        ))),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// Load a PEM key (PKCS#8, or PKCS#1 for RSA) that must be private to `uid`.
    pub fn load(path: &Path, alg: Algorithm, kid: Option<String>, uid: u32) -> Result<SigningKey> {
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::config(format!("cannot read private key {}: {e}", path.display()))
        })?;
        if meta.mode() & 0o077 != 0 || meta.uid() != uid {
            crate::store::fsutil::check_private(path, &meta, uid)?;
        }
        let pem = std::fs::read(path).map_err(|e| {
            Error::config(format!("cannot read private key {}: {e}", path.display()))
        })?;
        let unusable = |why: String| {
            Error::config(format!(
                "{} is not a usable {} private key: {why}",
                path.display(),
                alg.name()
            ))
            .with_hint(
                "use a PEM private key in PKCS#8 (or PKCS#1 for RSA) that matches private_key_alg",
            )
        };
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| unusable(format!("no PEM private key ({e})")))?;
        let key = match (alg, &der) {
            (Algorithm::ES256, PrivateKeyDer::Sec1(_)) => {
                return Err(Error::config(format!(
                    "{} is a SEC1 EC key; ES256 needs PKCS#8",
                    path.display()
                ))
                .with_hint(format!(
                    "convert it: openssl pkcs8 -topk8 -nocrypt -in {0} -out {0}.pk8",
                    path.display()
                )));
            }
            (Algorithm::ES256, PrivateKeyDer::Pkcs8(k)) => KeyPair::Ecdsa(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    k.secret_pkcs8_der(),
                    &SystemRandom::new(),
                )
                .map_err(|e| unusable(format!("not a P-256 key ({e})")))?,
            ),
            (_, PrivateKeyDer::Pkcs8(k)) => KeyPair::Rsa(
                RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
                    .map_err(|e| unusable(format!("not an RSA key ({e})")))?,
            ),
            (Algorithm::ES256, _) => return Err(unusable("an RSA key cannot sign ES256".into())),
            (_, PrivateKeyDer::Pkcs1(k)) => KeyPair::Rsa(
                RsaKeyPair::from_der(k.secret_pkcs1_der())
                    .map_err(|e| unusable(format!("not an RSA key ({e})")))?,
            ),
            (_, _) => {
                return Err(unusable(
                    "an EC key cannot sign RS256, RS384 or PS256".into(),
                ));
            }
        };
        Ok(SigningKey {
            path: path.to_path_buf(),
            alg,
            kid,
            key,
        })
    }

    /// A fresh client assertion for `client_id` with audience `aud`, issued at `now`.
    pub fn assertion(&self, client_id: &str, aud: &str, now: u64) -> Result<Secret> {
        let mut header = serde_json::json!({ "alg": self.alg.name(), "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let jti = format!("{:032x}", rand::random::<u128>());
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": aud,
            "jti": jti,
            "iat": now,
            "nbf": now.saturating_sub(5),
            "exp": now + 60,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let failed = |e: ring::error::Unspecified| {
            Error::internal(format!(
                "signing the client assertion with {}: {e}",
                self.path.display()
            ))
        };
        let sig = match &self.key {
            KeyPair::Rsa(k) => {
                let padding: &dyn signature::RsaEncoding = match self.alg {
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(padding, &rng, signing_input.as_bytes(), &mut sig)
                    .map_err(failed)?;
                sig
            }
            KeyPair::Ecdsa(k) => k
                .sign(&rng, signing_input.as_bytes())
                .map_err(failed)?
                .as_ref()
                .to_vec(),
        };
        Ok(Secret::new(format!("{signing_input}.{}", b64(&sig))))
    }
}

/// RFC 7523's assertion type.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
