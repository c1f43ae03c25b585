//! Client authentication at the token endpoint: `client_secret_post`, `client_secret_basic`
//! and `private_key_jwt` (RFC 7523) with a fresh assertion per request (`iss` = `sub` =
//! client id, `aud` = the issuer exactly as discovery reports it unless configured
//! otherwise, unique `jti`, `exp` within 60 s). Keys and secrets stay in [`Secret`]s and
//! key files that others can read are refused.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

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

/// A private key for `private_key_jwt`.
pub struct SigningKey {
    /// Where it came from (for messages).
    pub path: PathBuf,
    /// The JWS algorithm.
    pub alg: Algorithm,
    /// The `kid` header, if configured.
    pub kid: Option<String>,
    key: EncodingKey,
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

impl SigningKey {
    /// Load a PEM key (PKCS#8, or PKCS#1 for RSA) that must be private to `uid`.
    pub fn load(path: &Path, alg: Algorithm, kid: Option<String>, uid: u32) -> Result<SigningKey> {
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::config(format!("cannot read private key {}: {e}", path.display()))
        })?;
        if meta.mode() & 0o077 != 0 || meta.uid() != uid {
            crate::store::fsutil::check_private(path, &meta, uid)?;
        }
        let pem = Secret::new(std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read private key {}: {e}", path.display()))
        })?);
        let key = match alg {
            Algorithm::ES256 => {
                if pem.expose().contains("BEGIN EC PRIVATE KEY") {
                    return Err(Error::config(format!(
                        "{} is a SEC1 EC key; ES256 needs PKCS#8",
                        path.display()
                    ))
                    .with_hint(format!(
                        "convert it: openssl pkcs8 -topk8 -nocrypt -in {0} -out {0}.pk8",
                        path.display()
                    )));
                }
                EncodingKey::from_ec_pem(pem.expose().as_bytes())
            }
            _ => EncodingKey::from_rsa_pem(pem.expose().as_bytes()),
        }
        .map_err(|e| {
            Error::config(format!(
                "{} is not a usable {alg:?} private key: {e}",
                path.display()
            ))
            .with_hint(
                "use a PEM private key in PKCS#8 (or PKCS#1 for RSA) that matches private_key_alg",
            )
        })?;
        Ok(SigningKey {
            path: path.to_path_buf(),
            alg,
            kid,
            key,
        })
    }

    /// A fresh client assertion for `client_id` with audience `aud`, issued at `now`.
    pub fn assertion(&self, client_id: &str, aud: &str, now: u64) -> Result<Secret> {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
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
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| {
                Error::internal(format!(
                    "signing the client assertion with {}: {e}",
                    self.path.display()
                ))
            })
    }
}

/// RFC 7523's assertion type.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
