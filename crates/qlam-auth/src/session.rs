//! A session ties the pieces together for one (context, provider): configuration, the store,
//! and — built lazily, only when the network is really needed — the HTTP client and
//! discovery. This is the API the `qlam-hpc` binary calls.

use std::cell::{OnceCell, RefCell};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::context::Ctx;
use crate::discovery::{self, Discovery};
use crate::error::{Error, ErrorKind, Result};
use crate::flows::client_auth::{ClientAuth, SigningKey, parse_alg};
use crate::flows::client_credentials;
use crate::flows::{TokenResponse, browser, device, refresh, revoke};
use crate::http::{Failure, HttpClient, backoff, with_retries};
use crate::secret::Secret;
use crate::store::format::{StoreFile, iso_unix, parse_time};
use crate::store::ledger::{Ledger, ledger_path};
use crate::store::single_flight::{self, EnsureOptions, Ensured, Renew, RenewError};
use crate::store::{LockIdentity, LockOptions, Store, lock};

/// Default `--min-ttl` for `token`, `env` and `exec`.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(300);

/// One (context, provider) and its store.
pub struct Session {
    /// The process context.
    pub ctx: Ctx,
    /// Resolved configuration.
    pub settings: Settings,
    /// The token store.
    pub store: Store,
    net: OnceCell<Net>,
}

struct Net {
    http: HttpClient,
    discovery: Discovery,
}

/// Told about a login's progress; the binary renders these.
pub trait LoginObserver: device::PollObserver {
    /// The user must open this URL and enter this code.
    fn device_authorization(&mut self, auth: &device::DeviceAuthorization);
}

/// What `status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Context name.
    pub context: String,
    /// Provider name.
    pub provider: String,
    /// The grant configured for the provider.
    pub grant_type: Option<String>,
    /// The credentials file.
    pub store_path: String,
    /// Whether a credentials file exists.
    pub logged_in: bool,
    /// `sub` of the ID token.
    pub subject: Option<String>,
    /// `email` of the ID token.
    pub email: Option<String>,
    /// `name` of the ID token.
    pub name: Option<String>,
    /// Access-token expiry (unix seconds).
    pub access_token_expires_at: Option<f64>,
    /// Seconds left on the access token.
    pub access_token_expires_in: Option<i64>,
    /// Whether the access token is valid now.
    pub access_token_valid: bool,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// When the user logged in (ISO 8601).
    pub login_at: Option<String>,
    /// Seconds since login.
    pub login_age_seconds: Option<i64>,
    /// Estimated refresh-token expiry: login + `refresh_token_lifetime` (ISO 8601).
    pub refresh_token_expires_at_estimate: Option<String>,
    /// When the last refresh happened.
    pub last_refresh_at: Option<String>,
    /// Host of the last refresh.
    pub last_refresh_host: Option<String>,
    /// Pid of the last refresh.
    pub last_refresh_pid: Option<u32>,
    /// Job of the last refresh.
    pub last_refresh_job: Option<String>,
    /// The last recorded failure.
    pub last_error: Option<String>,
    /// The configured lock method.
    pub lock_method: String,
    /// The store's write generation.
    pub generation: u64,
    /// M2M mints this month (M2M providers).
    pub m2m_mints_this_month: Option<u64>,
    /// M2M monthly budget.
    pub m2m_monthly_budget: Option<u64>,
    /// Whether a token is valid or can be refreshed (exit 0) or a login is needed (41).
    pub usable: bool,
}

impl Session {
    /// A session for `settings`.
    pub fn new(ctx: Ctx, settings: Settings) -> Session {
        let store = Store::new(
            &settings.qsh.credentials_dir,
            &settings.context,
            &settings.provider_name,
            ctx.uid,
        );
        Session {
            ctx,
            settings,
            store,
            net: OnceCell::new(),
        }
    }

    /// Lock settings for this process.
    pub fn lock_options(&self) -> LockOptions {
        LockOptions {
            method: self.settings.lock,
            timeout: self.settings.lock_timeout,
            node_local_dir: self.ctx.runtime_dir(),
            lease_ttl: Duration::from_secs(30),
            identity: LockIdentity {
                host: self.ctx.hostname.clone(),
                pid: self.ctx.pid,
                boot_id: self.ctx.boot_id(),
                job_id: self.ctx.job_id(),
            },
            simulate_ofd_errno: None,
        }
    }

    fn net(&self) -> Result<&Net> {
        self.net_until(Instant::now() + self.settings.refresh_deadline)
    }

    /// The network side, built on first use; discovery gives up at `deadline`.
    fn net_until(&self, deadline: Instant) -> Result<&Net> {
        if let Some(n) = self.net.get() {
            return Ok(n);
        }
        let base = &self.settings.provider.auth_base_url;
        let http = HttpClient::new(&self.ctx, &self.settings.http, base)?;
        let cache_dir = self.store.dir.is_dir().then_some(self.store.dir.as_path());
        let discovery = discovery::discover(&http, base, cache_dir, self.ctx.now_unix(), deadline)?;
        let _ = self.net.set(Net { http, discovery });
        Ok(self.net.get().expect("just set"))
    }

    /// The client secret, if configured: literal, `env:VAR`, or a 0600 file.
    pub fn client_secret(&self) -> Result<Option<Secret>> {
        let p = &self.settings.provider;
        if let Some(s) = &p.client_secret {
            if let Some(var) = s.expose().strip_prefix("env:") {
                return match self.ctx.var(var) {
                    Some(v) => Ok(Some(Secret::new(v))),
                    None => Err(Error::config(format!(
                        "client_secret refers to ${var}, which is not set"
                    ))
                    .with_hint(format!("export {var} in the job's environment"))),
                };
            }
            return Ok(Some(s.clone()));
        }
        if let Some(path) = &p.client_secret_file {
            return read_secret_file(path, self.ctx.uid).map(Some);
        }
        Ok(None)
    }

    /// Ensure a token with at least `min_ttl` left (DESIGN §6).
    pub fn ensure(&self, min_ttl: Duration, force: bool) -> Result<Ensured> {
        let opts = EnsureOptions {
            min_ttl,
            force,
            failure_window: Duration::from_secs(30),
        };
        if self.settings.provider.is_m2m() {
            let minter = Minter {
                session: self,
                warning: RefCell::new(None),
            };
            let mut ensured = single_flight::ensure(&self.ctx, &self.store, &minter, &opts)?;
            if ensured.warning.is_none() {
                ensured.warning = minter.warning.take();
            }
            return Ok(ensured);
        }
        single_flight::ensure(&self.ctx, &self.store, &Refresher { session: self }, &opts)
    }

    /// Interactive device login; writes the store and, if none exists, a minimal qsh config.
    pub fn login_device(&self, observer: &mut dyn LoginObserver) -> Result<StoreFile> {
        // The credentials directory first, so that discovery is cached beside the store.
        self.store.ensure_dir()?;
        let net = self.net()?;
        let auth = device::start(&net.http, &net.discovery, &self.settings.provider)?;
        observer.device_authorization(&auth);
        let (tokens, sent_at) = device::poll(
            &net.http,
            &net.discovery,
            &self.settings.provider,
            &auth,
            observer,
        )?;
        let sent = sent_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.save_login(&tokens, sent, "device_code")
    }

    /// Interactive browser login (authorization code + PKCE). `show` receives the URL to
    /// open once the redirect listener is up; waits at most `timeout` for the redirect.
    pub fn login_browser(
        &self,
        show: &mut dyn FnMut(&str),
        timeout: Duration,
    ) -> Result<StoreFile> {
        self.store.ensure_dir()?;
        let net = self.net()?;
        let req = browser::prepare(&net.discovery, &self.settings.provider)?;
        let listener = browser::listen(self.settings.provider.redirect_port)?;
        show(&req.url);
        let (code, page) = browser::wait_for_code(&listener, &req, timeout)?;
        drop(listener);
        let secret = self.client_secret()?;
        let exchanged = browser::exchange(
            &net.http,
            &net.discovery,
            &self.settings.provider,
            &req,
            &code,
            secret.as_ref(),
        );
        let result = exchanged.and_then(|(tokens, sent)| {
            let sent = sent
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.save_login(&tokens, sent, "authorization_code")
        });
        browser::finish(page, result.as_ref().map(|_| ()).map_err(|e| e.message()));
        result
    }

    /// Revoke the stored refresh token at the IdP (RFC 7009). Returns whether there was one.
    pub fn revoke(&self) -> Result<bool> {
        let Some(file) = self.store.read()? else {
            return Ok(false);
        };
        let Some(rt) = file.token().and_then(|t| t.refresh_token.clone()) else {
            return Ok(false);
        };
        let net = self.net()?;
        let secret = self.client_secret()?;
        revoke::revoke_refresh_token(
            &net.http,
            &net.discovery,
            &self.settings.provider,
            &rt,
            secret.as_ref(),
        )?;
        Ok(true)
    }

    /// Store the tokens of a fresh login, under the lock.
    pub fn save_login(
        &self,
        tokens: &TokenResponse,
        sent_at: f64,
        grant: &str,
    ) -> Result<StoreFile> {
        self.store.ensure_dir()?;
        let _guard = lock::acquire(&self.store.lock_file, &self.lock_options())?;
        // A broken old file must not stop a new login from replacing it.
        let prev = self.store.read().ok().flatten();
        let now = self.ctx.now_unix();
        let mut file =
            StoreFile::from_tokens(&self.store.context, tokens, sent_at, now, prev.as_ref());
        let extra = file.extra.get_or_insert_with(Default::default);
        let meta = extra.qlam_hpc.get_or_insert_with(Default::default);
        meta.login_at = Some(iso_unix(now));
        meta.refreshed_at = None;
        meta.refreshed_by = None;
        meta.last_error = None;
        meta.grant_type = Some(grant.to_string());
        if prev.is_none() {
            file.created_at = iso_unix(now);
        }
        self.store.write(&file)?;
        crate::config::write_minimal_qsh_config(&self.settings)?;
        Ok(file)
    }

    /// Remove the local credentials. Returns whether there were any.
    pub fn logout(&self) -> Result<bool> {
        let _guard = if self.store.lock_file.exists() {
            Some(lock::acquire(&self.store.lock_file, &self.lock_options())?)
        } else {
            None
        };
        self.store.remove()
    }

    /// What `status` shows.
    pub fn status(&self) -> Result<Status> {
        let file = self.store.read()?;
        let now = self.ctx.now_unix();
        let token = file.as_ref().and_then(StoreFile::token);
        let meta = file.as_ref().and_then(StoreFile::meta);
        let ident = token
            .and_then(|t| t.id_token.as_ref())
            .and_then(|i| crate::jwt::identity(i.expose()));
        let expires = file.as_ref().and_then(StoreFile::expires_at_unix);
        let valid = token.is_some() && expires.is_none_or(|e| e > now);
        let login_at = meta.and_then(|m| m.login_at.clone());
        let login_unix = login_at
            .as_deref()
            .and_then(parse_time)
            .map(|t| t.timestamp() as f64);
        let rt_lifetime = self.settings.provider.refresh_token_lifetime.as_secs_f64();
        let rt_estimate = login_unix.map(|l| l + rt_lifetime);
        let has_rt = token.is_some_and(|t| t.refresh_token.is_some());
        let login_required = meta
            .and_then(|m| m.last_error.as_ref())
            .is_some_and(|e| e.kind == "login_required");
        let rt_alive = rt_estimate.is_none_or(|e| e > now);
        let usable =
            valid || (has_rt && !login_required && rt_alive) || self.settings.provider.is_m2m();
        Ok(Status {
            context: self.settings.context.clone(),
            provider: self.settings.provider_name.clone(),
            grant_type: self
                .settings
                .provider
                .grant_type
                .map(|g| g.as_str().to_string()),
            store_path: self.store.file.display().to_string(),
            logged_in: file.is_some(),
            subject: ident.as_ref().and_then(|i| i.subject.clone()),
            email: ident.as_ref().and_then(|i| i.email.clone()),
            name: ident.as_ref().and_then(|i| i.name.clone()),
            access_token_expires_at: expires,
            access_token_expires_in: expires.map(|e| (e - now).round() as i64),
            access_token_valid: valid,
            has_refresh_token: has_rt,
            login_at,
            login_age_seconds: login_unix.map(|l| (now - l) as i64),
            refresh_token_expires_at_estimate: rt_estimate.map(iso_unix),
            last_refresh_at: meta.and_then(|m| m.refreshed_at.clone()),
            last_refresh_host: meta
                .and_then(|m| m.refreshed_by.as_ref())
                .map(|b| b.host.clone()),
            last_refresh_pid: meta.and_then(|m| m.refreshed_by.as_ref()).map(|b| b.pid),
            last_refresh_job: meta
                .and_then(|m| m.refreshed_by.as_ref())
                .and_then(|b| b.job_id.clone()),
            last_error: meta
                .and_then(|m| m.last_error.as_ref())
                .map(|e| format!("{} ({}, {})", e.message, e.kind, e.at)),
            lock_method: self.settings.lock.to_string(),
            generation: file.as_ref().map_or(0, StoreFile::generation),
            m2m_mints_this_month: if self.settings.provider.is_m2m() {
                Some(Ledger::read(&ledger_path(&self.store.file))?.count(now))
            } else {
                None
            },
            m2m_monthly_budget: self.settings.provider.m2m_monthly_budget,
            usable,
        })
    }

    /// Whether this process runs inside a batch job (`SLURM_JOB_ID` or `PBS_JOBID`).
    pub fn in_batch_job(&self) -> bool {
        self.ctx.job_id().is_some()
    }
}

/// Read a secret from a file that must be private (0600, ours).
pub fn read_secret_file(path: &std::path::Path, uid: u32) -> Result<Secret> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::config(format!("cannot read secret file {}: {e}", path.display())))?;
    if meta.mode() & 0o077 != 0 || meta.uid() != uid {
        return crate::store::fsutil::check_private(path, &meta, uid).map(|_| Secret::default());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read secret file {}: {e}", path.display())))?;
    Ok(Secret::new(text.trim()))
}

struct Refresher<'a> {
    session: &'a Session,
}

impl Renew for Refresher<'_> {
    fn renew(
        &self,
        current: Option<&StoreFile>,
    ) -> std::result::Result<(TokenResponse, f64), RenewError> {
        let s = self.session;
        let rt = current
            .and_then(StoreFile::token)
            .and_then(|t| t.refresh_token.clone())
            .ok_or_else(|| {
                RenewError::Other(
                    Error::auth("the stored login has no refresh token, so it cannot be renewed")
                        .with_hint("run `qlam-hpc login` on a login node"),
                )
            })?;
        let deadline = Instant::now() + s.settings.refresh_deadline;
        let net = s.net_until(deadline).map_err(RenewError::Other)?;
        let secret = s.client_secret().map_err(RenewError::Other)?;
        let mut sent_at = s.ctx.now_unix();
        let result = with_retries(deadline, 6, || {
            sent_at = s.ctx.now_unix();
            refresh::refresh(
                &net.http,
                &net.discovery,
                &s.settings.provider,
                secret.as_ref(),
                &rt,
            )
        });
        match result {
            Ok(tokens) => Ok((tokens, sent_at)),
            Err(f) if f.oauth_error() == Some("invalid_grant") => Err(RenewError::Rejected(f)),
            Err(f) if f.kind() == ErrorKind::Config => {
                Err(RenewError::Other(f.into_error("refreshing the token")))
            }
            Err(f) if f.oauth_error().is_some() => Err(RenewError::Rejected(f)),
            Err(f) => Err(RenewError::Failed(f)),
        }
    }

    fn grant(&self) -> &'static str {
        "refresh_token"
    }

    fn can_start_empty(&self) -> bool {
        false
    }

    fn lock_options(&self) -> LockOptions {
        self.session.lock_options()
    }
}

impl Session {
    /// How this client authenticates at the token endpoint (M2M): a private key if one is
    /// configured, else the secret by the configured method or what discovery offers.
    pub fn client_auth(&self, disc: &Discovery) -> Result<ClientAuth> {
        let p = &self.settings.provider;
        let method = p.token_endpoint_auth_method.as_deref();
        if let Some(path) = &p.private_key_file {
            if method.is_some_and(|m| m != "private_key_jwt") {
                return Err(Error::config(format!(
                    "token_endpoint_auth_method is {} but private_key_file is set",
                    method.unwrap_or_default()
                )));
            }
            let alg = parse_alg(p.private_key_alg.as_deref().unwrap_or("RS256"))?;
            let mut keys = vec![SigningKey::load(path, alg, p.key_id.clone(), self.ctx.uid)?];
            if let Some((next, next_alg, next_kid)) = &p.private_key_next {
                let alg = match next_alg {
                    Some(a) => parse_alg(a)?,
                    None => alg,
                };
                keys.push(SigningKey::load(next, alg, next_kid.clone(), self.ctx.uid)?);
            }
            return Ok(ClientAuth::PrivateKeyJwt(keys));
        }
        if method == Some("private_key_jwt") {
            return Err(Error::config("token_endpoint_auth_method is private_key_jwt but no private_key_file is set")
                .with_hint("set private_key_file (and private_key_alg) in the qlam-hpc config, or QLAM_PRIVATE_KEY_FILE"));
        }
        let Some(secret) = self.client_secret()? else {
            return Err(Error::config(format!(
                "provider {:?} uses client_credentials but has no client secret or private key",
                self.settings.provider_name
            ))
            .with_hint("set client_secret (e.g. \"env:QLAM_M2M_SECRET\"), client_secret_file or private_key_file"));
        };
        let supported = &disc.token_endpoint_auth_methods_supported;
        let basic = match method {
            Some("client_secret_basic") => true,
            Some(_) => false,
            // RFC 8414: an IdP that lists nothing supports client_secret_basic.
            None if supported.is_empty() => true,
            None => {
                !supported.iter().any(|m| m == "client_secret_post")
                    && supported.iter().any(|m| m == "client_secret_basic")
            }
        };
        Ok(if basic {
            ClientAuth::SecretBasic(secret)
        } else {
            ClientAuth::SecretPost(secret)
        })
    }
}

/// Mints M2M tokens, counting each in the monthly ledger and refusing past the budget.
struct Minter<'a> {
    session: &'a Session,
    warning: RefCell<Option<String>>,
}

fn is_assertion_replay(f: &Failure) -> bool {
    match f {
        Failure::OAuth {
            error, description, ..
        } if error == "invalid_client" => {
            let d = description
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            d.contains("replay") || d.contains("jti")
        }
        _ => false,
    }
}

impl Renew for Minter<'_> {
    fn renew(
        &self,
        _current: Option<&StoreFile>,
    ) -> std::result::Result<(TokenResponse, f64), RenewError> {
        let s = self.session;
        let p = &s.settings.provider;
        let ledger = ledger_path(&s.store.file);
        let now = s.ctx.now_unix();
        let used = Ledger::read(&ledger).map_err(RenewError::Other)?.count(now);
        if let Some(budget) = p.m2m_monthly_budget
            && used >= budget
        {
            return Err(RenewError::Other(
                    Error::new(
                        ErrorKind::Budget,
                        format!("the M2M monthly budget is used up: {used} of {budget} mints this month (UTC)"),
                    )
                    .with_hint("cached tokens are still served; raise m2m_monthly_budget or wait for the next month"),
                ));
        }
        let deadline = Instant::now() + s.settings.refresh_deadline;
        let net = s.net_until(deadline).map_err(RenewError::Other)?;
        let auth = s.client_auth(&net.discovery).map_err(RenewError::Other)?;
        let key_count = match &auth {
            ClientAuth::PrivateKeyJwt(k) => k.len(),
            _ => 1,
        };
        // Count the mint before sending it: a crash may over-count by one, never under-count.
        Ledger::add(&ledger, now, 1).map_err(RenewError::Other)?;
        let (mut attempt, mut key_index, mut replays) = (0u32, 0usize, 0u32);
        // Whether some attempt may have minted a token whose answer never arrived.
        let mut maybe_minted = false;
        let result = loop {
            attempt += 1;
            let sent_at = s.ctx.now_unix();
            match client_credentials::mint(
                &net.http,
                &net.discovery,
                p,
                &auth,
                key_index,
                sent_at as u64,
            ) {
                Ok(t) => break Ok((t, sent_at)),
                // A rejected assertion replay: the next attempt signs a fresh one.
                Err(f) if is_assertion_replay(&f) && replays < 3 => replays += 1,
                // Key rotation: the IdP no longer accepts this key; try the next one.
                Err(f)
                    if f.oauth_error() == Some("invalid_client") && key_index + 1 < key_count =>
                {
                    key_index += 1
                }
                Err(f) if f.is_transient() && attempt < 6 => {
                    maybe_minted |= matches!(f, Failure::Transport(_) | Failure::Malformed(_));
                    match backoff(&f, attempt, deadline) {
                        Some(wait) => std::thread::sleep(wait),
                        None => break Err(f),
                    }
                }
                Err(f) => break Err(f),
            }
        };
        match result {
            Ok((tokens, sent_at)) => {
                if let Some(budget) = p.m2m_monthly_budget {
                    let used = used + 1;
                    if used * 5 >= budget * 4 {
                        *self.warning.borrow_mut() = Some(format!(
                            "M2M budget: {used} of {budget} mints used this month (UTC)"
                        ));
                    }
                }
                Ok((tokens, sent_at))
            }
            Err(f) => {
                // The IdP answered every attempt and issued nothing: give the reservation back.
                if !maybe_minted
                    && matches!(
                        f,
                        Failure::OAuth { .. } | Failure::Status(_) | Failure::RateLimited(_)
                    )
                {
                    let _ = Ledger::add(&ledger, now, -1);
                }
                match f.kind() {
                    ErrorKind::Config | ErrorKind::Auth => {
                        Err(RenewError::Other(f.into_error("minting a token")))
                    }
                    _ => Err(RenewError::Failed(f)),
                }
            }
        }
    }

    fn grant(&self) -> &'static str {
        "client_credentials"
    }

    fn can_start_empty(&self) -> bool {
        true
    }

    fn lock_options(&self) -> LockOptions {
        self.session.lock_options()
    }
}
