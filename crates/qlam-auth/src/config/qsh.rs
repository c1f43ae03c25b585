//! QLAM Shell's `config.json`: read, never extended. QLAM Core rejects unknown keys there,
//! so qlam-hpc only reads the fields it needs and writes a minimal file when none exists.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ProviderFields;
use crate::error::{Error, Result};

/// The parts of a qsh config that qlam-hpc uses.
#[derive(Debug, Default, Clone)]
pub struct QshConfig {
    /// `current_context`
    pub current_context: Option<String>,
    /// Contexts by name, in file order.
    pub contexts: Vec<QshContext>,
}

/// One qsh context.
#[derive(Debug, Default, Clone)]
pub struct QshContext {
    /// `name`
    pub name: String,
    /// `defaults.auth_provider`
    pub default_provider: Option<String>,
    /// `defaults.http_client`
    pub http_client: HttpClientFields,
    /// OAuth providers by name (other provider kinds are listed with `None`).
    pub providers: BTreeMap<String, Option<ProviderFields>>,
}

/// `defaults.http_client`
#[derive(Debug, Default, Clone, Deserialize)]
pub struct HttpClientFields {
    /// `false`, `true`, or a CA bundle path.
    pub verify_ssl: Option<serde_json::Value>,
    /// Per-request timeout.
    pub request_timeout_seconds: Option<f64>,
    /// Whether redirects are followed.
    pub follow_redirects: Option<bool>,
}

#[derive(Deserialize)]
struct RawFile {
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<RawContext>,
}

#[derive(Deserialize)]
struct RawContext {
    name: String,
    #[serde(default)]
    defaults: Option<RawDefaults>,
    #[serde(default)]
    auth_providers: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawDefaults {
    auth_provider: Option<String>,
    #[serde(default)]
    http_client: Option<HttpClientFields>,
}

/// An OAuth provider entry as QLAM Core's schema defines it (unknown keys rejected, as
/// QLAM Core does).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOauthProvider {
    name: String,
    #[allow(dead_code)]
    provider: String,
    #[serde(default)]
    #[allow(dead_code)]
    chain_end: Option<bool>,
    auth_base_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    grant_type: Option<String>,
    scope: Option<String>,
    audience: Option<String>,
    tenant: Option<String>,
    #[allow(dead_code)]
    subject_token_type: Option<String>,
    #[allow(dead_code)]
    subject_token: Option<String>,
}

impl QshConfig {
    /// Read and validate `path`. A missing file is `Ok(None)`; a broken one is a config error
    /// naming the file.
    pub fn load(path: &Path) -> Result<Option<QshConfig>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::config(format!(
                    "cannot read QLAM Shell config {}: {e}",
                    path.display()
                )));
            }
        };
        Self::parse(&text, path).map(Some)
    }

    /// Parse the text of a qsh config file.
    pub fn parse(text: &str, path: &Path) -> Result<QshConfig> {
        let bad = |msg: String| {
            Error::config(format!("invalid QLAM Shell config {}: {msg}", path.display()))
                .with_hint("fix the file (QLAM Core validates it the same way) or point QSH_CONFIG at another one")
        };
        let raw: RawFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut contexts = Vec::new();
        for rc in raw.contexts {
            let mut providers = BTreeMap::new();
            for (i, entry) in rc
                .auth_providers
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let kind = entry
                    .get("provider")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                let name = entry
                    .get("name")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                let Some(name) = name else {
                    return Err(bad(format!(
                        "contexts[{}].auth_providers[{i}] has no \"name\"",
                        rc.name
                    )));
                };
                if kind != "oauth" {
                    providers.insert(name, None);
                    continue;
                }
                let p: RawOauthProvider = serde_json::from_value(entry)
                    .map_err(|e| bad(format!("context {:?}, provider {:?}: {e}", rc.name, name)))?;
                let fields = ProviderFields {
                    auth_base_url: p.auth_base_url,
                    client_id: p.client_id,
                    client_secret: p.client_secret,
                    grant_type: p.grant_type,
                    scope: p.scope,
                    audience: p.audience,
                    tenant: p.tenant,
                    ..ProviderFields::default()
                };
                providers.insert(p.name, Some(fields));
            }
            let (default_provider, http_client) = match rc.defaults {
                Some(d) => (d.auth_provider, d.http_client.unwrap_or_default()),
                None => (None, HttpClientFields::default()),
            };
            contexts.push(QshContext {
                name: rc.name,
                default_provider,
                http_client,
                providers,
            });
        }
        Ok(QshConfig {
            current_context: raw.current_context,
            contexts,
        })
    }

    /// The context named `name`.
    pub fn context(&self, name: &str) -> Option<&QshContext> {
        self.contexts.iter().find(|c| c.name == name)
    }
}

/// The minimal qsh config `login` writes when none exists, so QLAM Core and Bloqade find
/// the credentials: one context with one OAuth provider.
pub fn minimal_config_json(context: &str, provider: &str, fields: &super::Provider) -> String {
    let mut p = serde_json::Map::new();
    p.insert("name".into(), provider.into());
    p.insert("provider".into(), "oauth".into());
    p.insert("auth_base_url".into(), fields.auth_base_url.clone().into());
    p.insert("client_id".into(), fields.client_id.clone().into());
    if let Some(g) = fields.grant_type {
        p.insert("grant_type".into(), g.as_str().into());
    }
    for (k, v) in [
        ("scope", &fields.scope),
        ("audience", &fields.audience),
        ("tenant", &fields.tenant),
    ] {
        if let Some(v) = v {
            p.insert(k.into(), v.clone().into());
        }
    }
    let doc = serde_json::json!({
        "current_context": context,
        "contexts": [{
            "name": context,
            "qpu": "qpu-foo",
            "defaults": { "auth_provider": provider },
            "auth_providers": [serde_json::Value::Object(p)],
        }],
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}
