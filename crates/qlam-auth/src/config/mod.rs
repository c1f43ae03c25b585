//! Configuration: flags, environment, the user and site TOML files and QLAM Shell's
//! `config.json`, merged with DESIGN §3's precedence into one [`Settings`]. A broken or
//! unknown configuration is a loud error naming the key and the file, never a silent default.

pub mod qsh;
mod toml_file;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::context::Ctx;
use crate::duration::parse_duration;
use crate::env_vars::EnvVars;
use crate::error::{Error, Result};
use crate::store::LockMethod;
pub use qsh::{HttpClientFields, QshConfig};
pub use toml_file::{HooksSection, TomlFile};

/// The OAuth grant a provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    /// RFC 8628 device authorization.
    DeviceCode,
    /// Authorization code with PKCE.
    AuthorizationCode,
    /// Client credentials (M2M).
    ClientCredentials,
    /// Token exchange (not supported by qlam-hpc's login).
    TokenExchange,
}

impl GrantType {
    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::DeviceCode => "device_code",
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::TokenExchange => "token_exchange",
        }
    }

    fn parse(s: &str) -> Option<GrantType> {
        Some(match s {
            "device_code" => GrantType::DeviceCode,
            "authorization_code" => GrantType::AuthorizationCode,
            "client_credentials" => GrantType::ClientCredentials,
            "token_exchange" => GrantType::TokenExchange,
            _ => return None,
        })
    }
}

/// A duration written as seconds or as `90s`/`15m`/`2h`/`1d`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DurationValue {
    /// Plain seconds.
    Secs(u64),
    /// A string such as `15m`.
    Text(String),
}

impl DurationValue {
    fn resolve(&self, key: &str, origin: &str) -> Result<Duration> {
        match self {
            DurationValue::Secs(s) => Ok(Duration::from_secs(*s)),
            DurationValue::Text(t) => {
                parse_duration(t).map_err(|e| Error::config(format!("{key} in {origin}: {e}")))
            }
        }
    }
}

/// Every provider field, as read from one source; `None` means "not set here".
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFields {
    /// The IdP's base URL.
    pub auth_base_url: Option<String>,
    /// The OAuth client id.
    pub client_id: Option<String>,
    /// Literal or `env:VAR`.
    pub client_secret: Option<String>,
    /// A 0600 file with the secret.
    pub client_secret_file: Option<PathBuf>,
    /// `device_code` | `authorization_code` | `client_credentials` | `token_exchange`.
    pub grant_type: Option<String>,
    /// Requested scope.
    pub scope: Option<String>,
    /// Auth0 audience.
    pub audience: Option<String>,
    /// Auth0 organization.
    pub tenant: Option<String>,
    /// private_key_jwt key (PEM).
    pub private_key_file: Option<PathBuf>,
    /// RS256, RS384, PS256, ES256.
    pub private_key_alg: Option<String>,
    /// The `kid` header.
    pub key_id: Option<String>,
    /// The assertion's `aud`, if not the issuer.
    pub assertion_audience: Option<String>,
    /// A second private key, tried when the first is rejected (key rotation).
    pub private_key_file_next: Option<PathBuf>,
    /// Its algorithm (default: `private_key_alg`).
    pub private_key_alg_next: Option<String>,
    /// Its `kid`.
    pub key_id_next: Option<String>,
    /// `client_secret_post` | `client_secret_basic` | `private_key_jwt` (default: from the key
    /// or secret configured and the IdP's discovery document).
    pub token_endpoint_auth_method: Option<String>,
    /// M2M mints allowed per calendar month (UTC).
    pub m2m_monthly_budget: Option<u64>,
    /// Default `--min-ttl`.
    pub min_ttl: Option<DurationValue>,
    /// Lock method.
    pub lock: Option<String>,
    /// Lock timeout.
    pub lock_timeout: Option<DurationValue>,
    /// Browser-flow redirect port.
    pub redirect_port: Option<u16>,
    /// How long a refresh token lives after login (for status and submit-time checks).
    pub refresh_token_lifetime: Option<DurationValue>,
    /// Deadline for a whole refresh or mint, retries included.
    pub refresh_deadline: Option<DurationValue>,
}

macro_rules! merge_fields {
    ($dst:expr, $src:expr, $($f:ident),*) => { $( if $src.$f.is_some() { $dst.$f = $src.$f.clone(); } )* };
}

impl ProviderFields {
    /// Overlay `other` on `self`: fields set in `other` win.
    pub fn merge_from(&mut self, other: &ProviderFields) {
        merge_fields!(
            self,
            other,
            auth_base_url,
            client_id,
            client_secret,
            client_secret_file,
            grant_type,
            scope,
            audience,
            tenant,
            private_key_file,
            private_key_alg,
            private_key_file_next,
            private_key_alg_next,
            key_id_next,
            token_endpoint_auth_method,
            key_id,
            assertion_audience,
            m2m_monthly_budget,
            min_ttl,
            lock,
            lock_timeout,
            redirect_port,
            refresh_token_lifetime,
            refresh_deadline
        );
    }

    fn from_env(ctx: &Ctx) -> Result<ProviderFields> {
        let s = |k: &str| ctx.var(k).map(str::to_string);
        let budget = match ctx.var(EnvVars::QLAM_M2M_MONTHLY_BUDGET) {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                Error::config(format!(
                    "{} must be a whole number, not {v:?}",
                    EnvVars::QLAM_M2M_MONTHLY_BUDGET
                ))
            })?),
            None => None,
        };
        Ok(ProviderFields {
            auth_base_url: s(EnvVars::QLAM_AUTH_BASE_URL),
            client_id: s(EnvVars::QLAM_CLIENT_ID),
            client_secret: s(EnvVars::QLAM_CLIENT_SECRET),
            client_secret_file: s(EnvVars::QLAM_CLIENT_SECRET_FILE).map(PathBuf::from),
            grant_type: s(EnvVars::QLAM_GRANT_TYPE),
            scope: s(EnvVars::QLAM_SCOPE),
            audience: s(EnvVars::QLAM_AUDIENCE),
            tenant: s(EnvVars::QLAM_TENANT),
            private_key_file: s(EnvVars::QLAM_PRIVATE_KEY_FILE).map(PathBuf::from),
            private_key_alg: s(EnvVars::QLAM_PRIVATE_KEY_ALG),
            key_id: s(EnvVars::QLAM_KEY_ID),
            token_endpoint_auth_method: s(EnvVars::QLAM_TOKEN_ENDPOINT_AUTH_METHOD),
            m2m_monthly_budget: budget,
            min_ttl: s(EnvVars::QLAM_MIN_TTL).map(DurationValue::Text),
            lock: s(EnvVars::QLAM_LOCK),
            lock_timeout: s(EnvVars::QLAM_LOCK_TIMEOUT).map(DurationValue::Text),
            refresh_deadline: s(EnvVars::QLAM_REFRESH_DEADLINE).map(DurationValue::Text),
            ..ProviderFields::default()
        })
    }

    fn is_empty_provider(&self) -> bool {
        self.auth_base_url.is_none() && self.client_id.is_none()
    }
}

/// A fully resolved provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// The IdP's base URL, without a trailing slash.
    pub auth_base_url: String,
    /// The OAuth client id.
    pub client_id: String,
    /// Literal or `env:VAR` (resolved only when a request needs it).
    pub client_secret: Option<crate::Secret>,
    /// A 0600 file with the secret.
    pub client_secret_file: Option<PathBuf>,
    /// The configured grant, if any.
    pub grant_type: Option<GrantType>,
    /// Requested scope, if configured.
    pub scope: Option<String>,
    /// Auth0 audience.
    pub audience: Option<String>,
    /// Auth0 organization.
    pub tenant: Option<String>,
    /// private_key_jwt key.
    pub private_key_file: Option<PathBuf>,
    /// private_key_jwt algorithm.
    pub private_key_alg: Option<String>,
    /// private_key_jwt key id.
    pub key_id: Option<String>,
    /// Assertion audience override.
    pub assertion_audience: Option<String>,
    /// The rotation key: file, algorithm, kid.
    pub private_key_next: Option<(PathBuf, Option<String>, Option<String>)>,
    /// Configured token endpoint authentication method.
    pub token_endpoint_auth_method: Option<String>,
    /// M2M monthly budget.
    pub m2m_monthly_budget: Option<u64>,
    /// Browser-flow redirect port (18080).
    pub redirect_port: u16,
    /// Refresh-token lifetime after login (15 days).
    pub refresh_token_lifetime: Duration,
}

impl Provider {
    /// Whether tokens come from client credentials (minted, not refreshed).
    pub fn is_m2m(&self) -> bool {
        self.grant_type == Some(GrantType::ClientCredentials)
    }

    /// The scope user flows ask for: the configured one, else
    /// `openid profile email offline_access`; plus `organization:<tenant>` when set.
    pub fn user_scope(&self) -> String {
        let mut scope = self
            .scope
            .clone()
            .unwrap_or_else(|| "openid profile email offline_access".into());
        if let Some(t) = &self.tenant {
            let org = format!("organization:{t}");
            if !scope.split_whitespace().any(|s| s == org) {
                scope.push(' ');
                scope.push_str(&org);
            }
        }
        scope
    }
}

/// How TLS certificates are verified for IdP requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// System roots (or `SSL_CERT_FILE`/`SSL_CERT_DIR`).
    Default,
    /// No verification (`verify_ssl: false`).
    Off,
    /// Trust this CA bundle.
    CaBundle(PathBuf),
}

/// HTTP settings for IdP requests.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Certificate verification.
    pub verify: Verify,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Whether redirects are followed.
    pub follow_redirects: bool,
}

/// Where QLAM Shell's files are.
#[derive(Debug, Clone)]
pub struct QshPaths {
    /// `$QSH_CONFIG_DIR` or `~/.qsh`.
    pub config_dir: PathBuf,
    /// `$QSH_CONFIG`, else `<config_dir>/config.json`.
    pub config_file: PathBuf,
    /// `<config_dir>/credentials`.
    pub credentials_dir: PathBuf,
}

impl QshPaths {
    /// Resolve from the environment.
    pub fn from_ctx(ctx: &Ctx) -> QshPaths {
        let config_dir = ctx
            .var(EnvVars::QSH_CONFIG_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(|| ctx.home.join(".qsh"));
        let config_file = ctx
            .var(EnvVars::QSH_CONFIG)
            .map(PathBuf::from)
            .unwrap_or_else(|| config_dir.join("config.json"));
        let credentials_dir = config_dir.join("credentials");
        QshPaths {
            config_dir,
            config_file,
            credentials_dir,
        }
    }
}

/// Settings that come from command-line flags (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--context`
    pub context: Option<String>,
    /// `--provider`
    pub provider: Option<String>,
}

/// Hook policy (site file only).
#[derive(Debug, Clone)]
pub struct HookSettings {
    /// Fail the job when staging fails (default false: log and go on).
    pub enforce: bool,
    /// Node-local staging root.
    pub stage_dir: PathBuf,
    /// A file the root-side hooks append their log lines to (besides stderr).
    pub log_file: Option<PathBuf>,
}

/// Everything resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The context name.
    pub context: String,
    /// The provider name.
    pub provider_name: String,
    /// The provider.
    pub provider: Provider,
    /// Default `--min-ttl`, if configured.
    pub min_ttl: Option<Duration>,
    /// The lock method.
    pub lock: LockMethod,
    /// The lock timeout.
    pub lock_timeout: Duration,
    /// Deadline for a whole refresh or mint.
    pub refresh_deadline: Duration,
    /// HTTP settings.
    pub http: HttpSettings,
    /// Hook policy.
    pub hooks: HookSettings,
    /// QLAM Shell's paths.
    pub qsh: QshPaths,
    /// Whether the qsh config file exists.
    pub qsh_config_exists: bool,
    /// The config files that were read, in precedence order (lowest first).
    pub files_read: Vec<PathBuf>,
}

fn user_config_path(ctx: &Ctx) -> PathBuf {
    if let Some(p) = ctx.var(EnvVars::QLAM_HPC_CONFIG) {
        return PathBuf::from(p);
    }
    let base = ctx
        .var(EnvVars::XDG_CONFIG_HOME)
        .map(PathBuf::from)
        .unwrap_or_else(|| ctx.home.join(".config"));
    base.join("qlam-hpc").join("config.toml")
}

fn site_config_path(ctx: &Ctx) -> PathBuf {
    ctx.var(EnvVars::QLAM_HPC_SITE_CONFIG)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/qlam-hpc/config.toml"))
}

fn describe(path: &Path) -> String {
    path.display().to_string()
}

/// Load and resolve the configuration.
pub fn load(ctx: &Ctx, overrides: &Overrides) -> Result<Settings> {
    let qsh_paths = QshPaths::from_ctx(ctx);
    let mut files_read = Vec::new();

    let site_path = site_config_path(ctx);
    let site = TomlFile::load(&site_path, true)?;
    if site.is_some() {
        files_read.push(site_path.clone());
    }
    let qsh = QshConfig::load(&qsh_paths.config_file)?;
    if qsh.is_some() {
        files_read.push(qsh_paths.config_file.clone());
    }
    let user_path = user_config_path(ctx);
    let user = TomlFile::load(&user_path, false)?;
    if user.is_some() {
        files_read.push(user_path.clone());
    }

    // Context: flag > env > qsh current_context > "default".
    let explicit_context = overrides
        .context
        .clone()
        .or_else(|| ctx.var(EnvVars::QLAM_CONTEXT).map(str::to_string));
    let context = explicit_context
        .clone()
        .or_else(|| qsh.as_ref().and_then(|q| q.current_context.clone()))
        .unwrap_or_else(|| "default".to_string());
    let qsh_context = match &qsh {
        Some(q) if !q.contexts.is_empty() => match q.context(&context) {
            Some(c) => Some(c),
            None => {
                let known: Vec<&str> = q.contexts.iter().map(|c| c.name.as_str()).collect();
                return Err(Error::config(format!(
                    "unknown context {context:?}: {} defines {}",
                    describe(&qsh_paths.config_file),
                    known.join(", ")
                ))
                .with_hint("pick one of those with --context or QLAM_CONTEXT"));
            }
        },
        _ => None,
    };

    // Provider: flag > env > qsh defaults.auth_provider > the context's only OAuth provider > "qlam".
    let explicit_provider = overrides
        .provider
        .clone()
        .or_else(|| ctx.var(EnvVars::QLAM_PROVIDER).map(str::to_string));
    let provider_name = explicit_provider
        .clone()
        .or_else(|| qsh_context.and_then(|c| c.default_provider.clone()))
        .or_else(|| {
            let oauth: Vec<&String> = qsh_context
                .map(|c| {
                    c.providers
                        .iter()
                        .filter(|(_, v)| v.is_some())
                        .map(|(k, _)| k)
                        .collect()
                })
                .unwrap_or_default();
            (oauth.len() == 1).then(|| oauth[0].clone())
        })
        .unwrap_or_else(|| "qlam".to_string());

    let qsh_fields = match qsh_context.and_then(|c| c.providers.get(&provider_name)) {
        Some(Some(f)) => Some(f.clone()),
        Some(None) => {
            return Err(Error::config(format!(
                "provider {provider_name:?} in context {context:?} ({}) is not an OAuth provider",
                describe(&qsh_paths.config_file)
            ))
            .with_hint("qlam-hpc handles OAuth providers only; select one with --provider or QLAM_PROVIDER"));
        }
        None => None,
    };

    // Merge, lowest precedence first.
    let mut fields = ProviderFields::default();
    let mut named_in_toml = false;
    // Within one file, [store] is the least specific, then [defaults], then [providers.NAME].
    let layer = |fields: &mut ProviderFields, file: &Option<TomlFile>, named: &mut bool| {
        if let Some(f) = file {
            if let Some(s) = &f.store {
                let store_fields = ProviderFields {
                    lock: s.lock.clone(),
                    lock_timeout: s.lock_timeout.clone(),
                    ..ProviderFields::default()
                };
                fields.merge_from(&store_fields);
            }
            if let Some(d) = &f.defaults {
                fields.merge_from(d);
            }
            if let Some(p) = f.providers.get(&provider_name) {
                *named = true;
                fields.merge_from(p);
            }
        }
    };
    layer(&mut fields, &site, &mut named_in_toml);
    if let Some(q) = &qsh_fields {
        fields.merge_from(q);
    }
    layer(&mut fields, &user, &mut named_in_toml);
    let env_fields = ProviderFields::from_env(ctx)?;
    fields.merge_from(&env_fields);
    // A provider named by a flag, the environment or the qsh context's `auth_provider` must
    // exist somewhere (a flag or variable may also name one the environment defines alone).
    let named_by_qsh = explicit_provider.is_none()
        && qsh_context
            .and_then(|c| c.default_provider.as_ref())
            .is_some();
    let env_defines = explicit_provider.is_some() && !env_fields.is_empty_provider();
    if (explicit_provider.is_some() || named_by_qsh)
        && qsh_fields.is_none()
        && !named_in_toml
        && !env_defines
    {
        let mut known: Vec<String> = qsh_context
            .map(|c| c.providers.keys().cloned().collect())
            .unwrap_or_default();
        for f in [&site, &user].into_iter().flatten() {
            known.extend(f.providers.keys().cloned());
        }
        return Err(Error::config(format!(
            "unknown provider {provider_name:?} in context {context:?}{}",
            if known.is_empty() {
                String::new()
            } else {
                format!(" (known: {})", known.join(", "))
            }
        ))
        .with_hint(
            "define it in the qsh config or in [providers.NAME] of a qlam-hpc config file",
        ));
    }

    let where_to_set = format!(
        "set it in {}, in [defaults] of {} or {}, or in the environment",
        qsh_paths.config_file.display(),
        user_path.display(),
        site_path.display()
    );
    let auth_base_url = fields.auth_base_url.clone().ok_or_else(|| {
        Error::config(format!(
            "no auth_base_url configured for provider {provider_name:?} in context {context:?}"
        ))
        .with_hint(format!(
            "{where_to_set} (QLAM_AUTH_BASE_URL); files read: {}",
            list(&files_read)
        ))
    })?;
    let parsed = url::Url::parse(&auth_base_url)
        .map_err(|e| Error::config(format!("auth_base_url {auth_base_url:?} is not a URL: {e}")))?;
    if parsed.scheme() != "https" && parsed.scheme() != "http" {
        return Err(Error::config(format!(
            "auth_base_url {auth_base_url:?} must be an https:// URL"
        )));
    }
    let client_id = fields.client_id.clone().ok_or_else(|| {
        Error::config(format!(
            "no client_id configured for provider {provider_name:?} in context {context:?}"
        ))
        .with_hint(format!(
            "{where_to_set} (QLAM_CLIENT_ID); files read: {}",
            list(&files_read)
        ))
    })?;
    let grant_type = match &fields.grant_type {
        Some(g) => Some(GrantType::parse(g).ok_or_else(|| {
            Error::config(format!(
                "grant_type {g:?} for provider {provider_name:?} is not one of device_code, authorization_code, client_credentials, token_exchange"
            ))
        })?),
        None => None,
    };
    let origin = "the configuration";
    let dur = |v: &Option<DurationValue>, key: &str| -> Result<Option<Duration>> {
        v.as_ref().map(|d| d.resolve(key, origin)).transpose()
    };
    let lock_str = fields.lock.clone();
    let lock = match lock_str {
        Some(s) => s
            .parse::<LockMethod>()
            .map_err(|e| Error::config(format!("lock: {e}")))?,
        None => LockMethod::Auto,
    };
    let lock_timeout =
        dur(&fields.lock_timeout, "lock_timeout")?.unwrap_or(Duration::from_secs(120));

    let http_fields = qsh_context
        .map(|c| c.http_client.clone())
        .unwrap_or_default();
    let verify = match &http_fields.verify_ssl {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(true)) => {
            Verify::Default
        }
        Some(serde_json::Value::Bool(false)) => Verify::Off,
        Some(serde_json::Value::String(p)) => match p.as_str() {
            "true" | "True" => Verify::Default,
            "false" | "False" => Verify::Off,
            path => Verify::CaBundle(PathBuf::from(path)),
        },
        Some(other) => {
            return Err(Error::config(format!(
                "defaults.http_client.verify_ssl in {} must be true, false or a CA bundle path, not {other}",
                describe(&qsh_paths.config_file)
            )));
        }
    };
    let request_timeout = Duration::from_secs_f64(
        http_fields
            .request_timeout_seconds
            .unwrap_or(30.0)
            .clamp(0.1, 300.0),
    );

    let hooks_section = site
        .as_ref()
        .and_then(|s| s.hooks.clone())
        .unwrap_or_default();
    let hooks = HookSettings::from(hooks_section);

    let provider = Provider {
        auth_base_url: auth_base_url.trim_end_matches('/').to_string(),
        client_id,
        client_secret: fields.client_secret.clone().map(crate::Secret::new),
        client_secret_file: fields.client_secret_file.clone(),
        grant_type,
        scope: fields.scope.clone(),
        audience: fields.audience.clone(),
        tenant: fields.tenant.clone(),
        private_key_file: fields.private_key_file.clone(),
        private_key_alg: fields.private_key_alg.clone(),
        key_id: fields.key_id.clone(),
        assertion_audience: fields.assertion_audience.clone(),
        private_key_next: fields.private_key_file_next.clone().map(|f| {
            (
                f,
                fields.private_key_alg_next.clone(),
                fields.key_id_next.clone(),
            )
        }),
        token_endpoint_auth_method: match fields.token_endpoint_auth_method.as_deref() {
            None => None,
            Some(m @ ("client_secret_post" | "client_secret_basic" | "private_key_jwt")) => {
                Some(m.to_string())
            }
            Some(other) => {
                return Err(Error::config(format!(
                    "token_endpoint_auth_method {other:?} is not one of client_secret_post, client_secret_basic, private_key_jwt"
                )));
            }
        },
        m2m_monthly_budget: fields.m2m_monthly_budget,
        redirect_port: fields.redirect_port.unwrap_or(18080),
        refresh_token_lifetime: dur(&fields.refresh_token_lifetime, "refresh_token_lifetime")?
            .unwrap_or(Duration::from_secs(15 * 86_400)),
    };
    let qsh_config_exists = qsh.is_some();
    Ok(Settings {
        context,
        provider_name,
        provider,
        min_ttl: dur(&fields.min_ttl, "min_ttl")?,
        lock,
        lock_timeout,
        refresh_deadline: dur(&fields.refresh_deadline, "refresh_deadline")?
            .unwrap_or(Duration::from_secs(60)),
        http: HttpSettings {
            verify,
            request_timeout,
            follow_redirects: http_fields.follow_redirects.unwrap_or(true),
        },
        hooks,
        qsh: qsh_paths,
        qsh_config_exists,
        files_read,
    })
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        "none".into()
    } else {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Write QLAM Shell's minimal `config.json` if none exists (never overwrites).
/// Returns whether a file was written.
pub fn write_minimal_qsh_config(settings: &Settings) -> Result<bool> {
    let path = &settings.qsh.config_file;
    if path.exists() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        crate::store::fsutil::create_private_dir(parent)?;
    }
    let text = qsh::minimal_config_json(
        &settings.context,
        &settings.provider_name,
        &settings.provider,
    );
    crate::store::fsutil::write_atomic(path, text.as_bytes(), 0o600, true)?;
    Ok(true)
}

/// The hook policy from the site file alone (root-side hooks read nothing of the user's).
pub fn load_hook_settings(ctx: &Ctx) -> Result<HookSettings> {
    let site = TomlFile::load(&site_config_path(ctx), true)?;
    Ok(HookSettings::from(
        site.and_then(|s| s.hooks).unwrap_or_default(),
    ))
}

impl From<HooksSection> for HookSettings {
    fn from(section: HooksSection) -> HookSettings {
        HookSettings {
            enforce: section.enforce.unwrap_or(false),
            stage_dir: section
                .stage_dir
                .unwrap_or_else(|| PathBuf::from("/run/qlam-hpc")),
            log_file: section.log_file,
        }
    }
}
