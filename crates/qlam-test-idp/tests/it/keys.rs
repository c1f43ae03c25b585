//! Test keys made with the `openssl` CLI once per test run, and client assertions signed
//! with them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use qlam_test_idp::{ClientKey, Idp, SigningAlg};
use serde_json::{Value, json};

/// A key pair on disk and in memory.
pub(crate) struct TestKey {
    pub(crate) private_pem: String,
    pub(crate) public_pem: String,
    pub(crate) public_path: PathBuf,
    ec: bool,
}

impl TestKey {
    /// The public half as a registered client key.
    pub(crate) fn client_key(&self, alg: SigningAlg, kid: Option<&str>) -> ClientKey {
        let key = ClientKey::new(alg, self.public_pem.clone());
        match kid {
            Some(k) => key.with_kid(k),
            None => key,
        }
    }

    fn encoding_key(&self) -> EncodingKey {
        if self.ec {
            EncodingKey::from_ec_pem(self.private_pem.as_bytes()).unwrap()
        } else {
            EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).unwrap()
        }
    }
}

pub(crate) struct Keys {
    _dir: tempfile::TempDir,
    /// RSA 2048: PKCS#8 private key, SPKI public key.
    pub(crate) rsa: TestKey,
    /// RSA 2048: PKCS#1 private key, PKCS#1 (`RSA PUBLIC KEY`) public key.
    pub(crate) rsa_pkcs1: TestKey,
    /// RSA 2048 never registered anywhere.
    pub(crate) rsa_other: TestKey,
    /// EC P-256: PKCS#8 private key, SPKI public key.
    pub(crate) ec: TestKey,
    /// EC P-384: not acceptable for ES256.
    pub(crate) ec_p384: TestKey,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI is needed for these tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn genpkey(dir: &Path, name: &str, opts: &[&str]) -> PathBuf {
    let path = dir.join(format!("{name}.key"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(opts);
    args.extend(["-out", path.to_str().unwrap()]);
    openssl(&args);
    path
}

fn spki(dir: &Path, name: &str, private: &Path, ec: bool) -> TestKey {
    let public_path = dir.join(format!("{name}.pub"));
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public_path.to_str().unwrap(),
    ]);
    TestKey {
        private_pem: read(private),
        public_pem: read(&public_path),
        public_path,
        ec,
    }
}

const RSA: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];

/// The keys, generated on first use.
pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let rsa = spki(d, "rsa", &genpkey(d, "rsa", RSA), false);
        let rsa_other = spki(d, "other", &genpkey(d, "other", RSA), false);

        let pkcs8 = genpkey(d, "p1-pkcs8", RSA);
        let (private1, public1) = (d.join("p1.key"), d.join("p1.pub"));
        let (pkcs8, private1_s, public1_s) = (
            pkcs8.to_str().unwrap(),
            private1.to_str().unwrap(),
            public1.to_str().unwrap(),
        );
        openssl(&["rsa", "-in", pkcs8, "-traditional", "-out", private1_s]);
        openssl(&["rsa", "-in", pkcs8, "-RSAPublicKey_out", "-out", public1_s]);
        let rsa_pkcs1 = TestKey {
            private_pem: read(&private1),
            public_pem: read(&public1),
            public_path: public1.clone(),
            ec: false,
        };
        assert!(
            rsa_pkcs1
                .private_pem
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        );
        assert!(
            rsa_pkcs1
                .public_pem
                .starts_with("-----BEGIN RSA PUBLIC KEY-----")
        );
        assert!(rsa.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));

        let p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
        let ec = spki(d, "ec", &genpkey(d, "ec", &p256), true);
        let p384 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"];
        let ec_p384 = spki(d, "ec384", &genpkey(d, "ec384", &p384), true);
        Keys {
            _dir: dir,
            rsa,
            rsa_pkcs1,
            rsa_other,
            ec,
            ec_p384,
        }
    })
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A jti never used before in this test run.
pub(crate) fn fresh_jti() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "jti-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Good claims for `client` at `idp`: `aud` the issuer, 60 s of life, a fresh `jti`.
pub(crate) fn claims(idp: &Idp, client: &str) -> Value {
    claims_for(&idp.issuer(), client)
}

/// Good claims for `client` at the IdP with this issuer.
pub(crate) fn claims_for(issuer: &str, client: &str) -> Value {
    let now = now();
    json!({
        "iss": client,
        "sub": client,
        "aud": issuer,
        "iat": now,
        "exp": now + 60,
        "jti": fresh_jti(),
    })
}

/// Signs `claims` with `key`.
pub(crate) fn sign(key: &TestKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, &key.encoding_key()).unwrap()
}
