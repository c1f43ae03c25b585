//! DESIGN §6, top to bottom: `ensure(min_ttl)` returns a token with at least `min_ttl` left,
//! and when a refresh (or M2M mint) is due, exactly one process in the cluster calls the IdP
//! while the others wait and reuse its result.
//!
//! Guarantees: the hot path reads one file and takes no lock; a writer holds the shared lock
//! from re-read to rename; the token-identity re-read keeps a racing loser (e.g. on a mount
//! whose locks are silently node-local) from destroying the winner's tokens; failures are
//! recorded in the store so an outage or a dead refresh token costs the IdP a handful of
//! requests, not one per task; nothing here ever deletes the credentials file.

use std::time::Duration;

use crate::context::Ctx;
use crate::error::{Error, ErrorKind, Result};
use crate::flows::TokenResponse;
use crate::http::Failure;
use crate::store::format::{LastError, RefreshedBy, StoreFile, iso_unix};
use crate::store::{LockOptions, Store, lock};

/// Why the IdP call failed, as the protocol needs to know it.
#[derive(Debug)]
pub enum RenewError {
    /// The refresh token (or client) was rejected for good: `invalid_grant`.
    Rejected(Failure),
    /// Still failing after retries within the deadline.
    Failed(Failure),
    /// Anything else (configuration, budget, ...), returned as is and recorded.
    Other(Error),
}

/// The IdP side of the protocol: refresh a user login or mint an M2M token.
pub trait Renew {
    /// Called with the shared lock held. `current` is the store as re-read under the lock.
    /// Returns the new tokens and the unix time the successful request was sent.
    fn renew(
        &self,
        current: Option<&StoreFile>,
    ) -> std::result::Result<(TokenResponse, f64), RenewError>;
    /// The grant name recorded in the store (`refresh_token`, `client_credentials`).
    fn grant(&self) -> &'static str;
    /// Whether no stored file is acceptable (M2M mints from nothing; users must log in).
    fn can_start_empty(&self) -> bool;
    /// Lock settings, asked for only when the lock is needed (step 2), so that the hot path
    /// does not pay for gathering them.
    fn lock_options(&self) -> LockOptions;
}

/// How to run [`ensure`].
#[derive(Debug, Clone)]
pub struct EnsureOptions {
    /// The token must have at least this much left (capped at half the IdP's lifetime).
    pub min_ttl: Duration,
    /// Renew even if the token is fresh (`refresh --force`); failures are then errors even
    /// while the old token is still valid.
    pub force: bool,
    /// How long a recorded transient failure is reused instead of calling the IdP again.
    pub failure_window: Duration,
}

/// Where the answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The stored token was fresh enough: no lock, no network.
    Cache,
    /// This process called the IdP.
    Renewed,
    /// Another process renewed it while this one waited for the lock.
    RenewedByOther,
    /// Renewal failed but the stored token is still valid; see the warning.
    Stale,
}

/// The result of [`ensure`].
#[derive(Debug, Clone)]
pub struct Ensured {
    /// The store content holding the token.
    pub file: StoreFile,
    /// Where it came from.
    pub source: Source,
    /// Set when the token is usable but something needs attention.
    pub warning: Option<String>,
    /// With [`Source::Stale`]: the kind of the failure behind the warning.
    pub failure: Option<ErrorKind>,
}

/// Seconds left on the stored token (may be negative); `None` when the expiry is unknown.
pub fn remaining(file: &StoreFile, now: f64) -> Option<f64> {
    file.expires_at_unix().map(|e| e - now)
}

/// `min_ttl` capped at half the lifetime the IdP last issued, so that asking for more than
/// the IdP gives does not turn every call into a refresh.
pub fn effective_min_ttl(file: &StoreFile, min_ttl: Duration) -> f64 {
    let want = min_ttl.as_secs_f64();
    match file.token().and_then(|t| t.expires_in) {
        Some(lifetime) if lifetime > 0 => want.min(lifetime as f64 / 2.0),
        _ => want,
    }
}

/// Whether the stored token satisfies `min_ttl` (step 1's test).
pub fn fresh_enough(file: &StoreFile, min_ttl: Duration, now: f64) -> bool {
    if file.token().is_none() {
        return false;
    }
    match remaining(file, now) {
        Some(left) => left >= effective_min_ttl(file, min_ttl),
        None => true, // no expiry known: QLAM Core treats such a token as valid too
    }
}

fn valid_now(file: &StoreFile, now: f64) -> bool {
    file.token().is_some() && remaining(file, now).is_none_or(|left| left > 0.0)
}

fn refresh_fp(file: Option<&StoreFile>) -> Option<String> {
    file.and_then(StoreFile::token)
        .and_then(|t| t.refresh_token.as_ref())
        .map(crate::Secret::fingerprint)
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Auth => "login_required",
        ErrorKind::Network => "network",
        ErrorKind::IdpServer => "idp_server",
        ErrorKind::Config => "config",
        ErrorKind::Budget => "budget",
        ErrorKind::Store => "store",
        _ => "internal",
    }
}

fn kind_from_name(name: &str) -> ErrorKind {
    match name {
        "login_required" => ErrorKind::Auth,
        "network" => ErrorKind::Network,
        "idp_server" => ErrorKind::IdpServer,
        "config" => ErrorKind::Config,
        "budget" => ErrorKind::Budget,
        "store" => ErrorKind::Store,
        _ => ErrorKind::Internal,
    }
}

fn login_required(message: String) -> Error {
    Error::auth(message).with_hint("run `qlam-hpc login` on a login node, then resubmit or rerun")
}

fn error_from_record(rec: &LastError) -> Error {
    let msg = format!(
        "{} (recorded {} by {})",
        rec.message,
        rec.at,
        rec.by.as_ref().map_or("?".into(), |b| b.host.clone())
    );
    match kind_from_name(&rec.kind) {
        ErrorKind::Auth => login_required(msg),
        ErrorKind::Budget => Error::new(ErrorKind::Budget, msg)
            .with_hint("cached tokens are still served; raise m2m_monthly_budget or wait for the next month"),
        ErrorKind::Config => Error::new(ErrorKind::Config, msg)
            .with_hint("fix the client configuration (client_id, secret or key, scope); the failure is shared for 30 s"),
        kind => Error::new(kind, msg).with_hint("another process just saw this; retry in a little while"),
    }
}

/// Make sure the store holds a token with at least `opts.min_ttl` left; see the module doc.
pub fn ensure(
    ctx: &Ctx,
    store: &Store,
    renew: &dyn Renew,
    opts: &EnsureOptions,
) -> Result<Ensured> {
    // 1. Lockless read: the hot path.
    let first = store.read()?;
    match &first {
        Some(f) if !opts.force && fresh_enough(f, opts.min_ttl, ctx.now_unix()) => {
            return Ok(Ensured {
                file: f.clone(),
                source: Source::Cache,
                warning: None,
                failure: None,
            });
        }
        None if !renew.can_start_empty() => {
            return Err(login_required(format!(
                "not logged in: no credentials at {}",
                store.file.display()
            )));
        }
        _ => {}
    }

    // 2. Node-local lock, then the shared lock (bounded by lock_timeout).
    store.ensure_dir()?;
    let guard = match lock::acquire(&store.lock_file, &renew.lock_options()) {
        Ok(g) => g,
        // A busy or stuck lock must not fail a job whose token is still valid.
        Err(e) if e.kind() == ErrorKind::LockTimeout => {
            return stale_or(first.as_ref(), ctx.now_unix(), opts, e);
        }
        Err(e) => return Err(e),
    };

    // 3. Re-read. New tokens since step 1 mean another process renewed: use them, whatever
    //    their lifetime, so waiters do not renew again one after another.
    let current = store.read()?;
    let now = ctx.now_unix();
    if let Some(cur) = &current {
        let changed = first
            .as_ref()
            .is_none_or(|f| f.token_identity() != cur.token_identity());
        if changed && valid_now(cur, now) && cur.token().is_some() {
            return Ok(Ensured {
                file: cur.clone(),
                source: Source::RenewedByOther,
                warning: None,
                failure: None,
            });
        }
        if !opts.force && fresh_enough(cur, opts.min_ttl, now) {
            return Ok(Ensured {
                file: cur.clone(),
                source: Source::Cache,
                warning: None,
                failure: None,
            });
        }
    } else if !renew.can_start_empty() {
        return Err(login_required(format!(
            "not logged in: no credentials at {}",
            store.file.display()
        )));
    }

    // 4. A failure recorded for this same refresh token: reuse it instead of calling the IdP.
    if let Some(rec) = current
        .as_ref()
        .and_then(|c| c.meta())
        .and_then(|m| m.last_error.as_ref())
    {
        let same_token = rec.refresh_token_fp == refresh_fp(current.as_ref());
        let permanent = rec.kind == "login_required";
        let recent = now - rec.at_unix < opts.failure_window.as_secs_f64() && now >= rec.at_unix;
        // `--force` (a keeper) retries a transient failure at once; a rejected login stays rejected.
        if same_token && (permanent || (recent && !opts.force)) {
            let err = error_from_record(rec);
            return stale_or(current.as_ref(), now, opts, err);
        }
    }

    // 5. Call the IdP (the renewer retries transient failures inside its deadline).
    let mut base = current.clone();
    let mut retried_after_rotation = false;
    loop {
        match renew.renew(base.as_ref()) {
            Ok((tokens, sent_at)) => {
                // 6. Persist before anything else: with rotation the old refresh token is spent.
                let latest = store.read().ok().flatten();
                let prev = latest.as_ref().or(base.as_ref());
                let mut file =
                    StoreFile::from_tokens(&store.context, &tokens, sent_at, ctx.now_unix(), prev);
                let meta = file.meta_mut();
                meta.refreshed_at = Some(iso_unix(ctx.now_unix()));
                meta.refreshed_by = Some(by(ctx));
                meta.grant_type = Some(renew.grant().to_string());
                meta.last_error = None;
                if !guard.still_held() {
                    // Our lease lapsed (e.g. the process was stopped); another process may hold
                    // it now. Writing is still right: these tokens are the newest the IdP issued
                    // for this refresh token, and the old refresh token is spent.
                    file.meta_mut().generation =
                        store.read().ok().flatten().map_or(0, |f| f.generation()) + 1;
                }
                store.write(&file)?;
                drop(guard);
                return Ok(Ensured {
                    file,
                    source: Source::Renewed,
                    warning: None,
                    failure: None,
                });
            }
            Err(RenewError::Rejected(f)) => {
                // 7. Rejected: if someone else rotated the token meanwhile (a lock that was
                //    not coherent), use or retry with theirs; otherwise record "login required".
                let again = store.read()?;
                if let Some(a) = &again
                    && refresh_fp(Some(a)) != refresh_fp(base.as_ref())
                {
                    if valid_now(a, ctx.now_unix()) && !opts.force {
                        return Ok(Ensured {
                            file: a.clone(),
                            source: Source::RenewedByOther,
                            warning: None,
                            failure: None,
                        });
                    }
                    if !retried_after_rotation {
                        retried_after_rotation = true;
                        base = again;
                        continue;
                    }
                }
                let err = login_required(format!(
                    "the IdP rejected the refresh token: {}; the login has expired or was revoked",
                    f.describe()
                ));
                record_failure(ctx, store, again.as_ref(), &err)?;
                drop(guard);
                return stale_or(again.as_ref(), ctx.now_unix(), opts, err);
            }
            Err(RenewError::Failed(f)) => {
                let what = if renew.can_start_empty() {
                    "minting a token"
                } else {
                    "refreshing the token"
                };
                let err = f.into_error(what);
                let latest = store.read()?;
                record_failure(ctx, store, latest.as_ref(), &err)?;
                drop(guard);
                return stale_or(latest.as_ref(), ctx.now_unix(), opts, err);
            }
            Err(RenewError::Other(err)) => {
                if matches!(
                    err.kind(),
                    ErrorKind::Budget
                        | ErrorKind::Config
                        | ErrorKind::Network
                        | ErrorKind::IdpServer
                ) {
                    let latest = store.read()?;
                    if latest.is_some() {
                        record_failure(ctx, store, latest.as_ref(), &err)?;
                    }
                }
                drop(guard);
                return stale_or(current.as_ref(), ctx.now_unix(), opts, err);
            }
        }
    }
}

/// A still-valid token with a warning, unless `force` asked for a real renewal.
fn stale_or(
    file: Option<&StoreFile>,
    now: f64,
    opts: &EnsureOptions,
    err: Error,
) -> Result<Ensured> {
    match file {
        Some(f) if !opts.force && valid_now(f, now) => Ok(Ensured {
            file: f.clone(),
            source: Source::Stale,
            warning: Some(format!(
                "{}; using the current token, which expires in {:.0}s{}",
                err.message(),
                remaining(f, now).unwrap_or(0.0),
                err.hint().map(|h| format!(" ({h})")).unwrap_or_default()
            )),
            failure: Some(err.kind()),
        }),
        _ => Err(err),
    }
}

fn by(ctx: &Ctx) -> RefreshedBy {
    RefreshedBy {
        host: ctx.hostname.clone(),
        pid: ctx.pid,
        job_id: ctx.job_id(),
    }
}

/// Record `err` in the store's metadata (tokens untouched) so other processes reuse it.
fn record_failure(ctx: &Ctx, store: &Store, file: Option<&StoreFile>, err: &Error) -> Result<()> {
    let Some(file) = file else { return Ok(()) };
    let mut updated = file.clone();
    let now = ctx.now_unix();
    let fp = refresh_fp(Some(file));
    let meta = updated.meta_mut();
    meta.generation += 1;
    meta.last_error = Some(LastError {
        at: iso_unix(now),
        at_unix: now,
        kind: kind_name(err.kind()).to_string(),
        message: err.message().to_string(),
        refresh_token_fp: fp,
        by: Some(by(ctx)),
    });
    updated.updated_at = iso_unix(now);
    store.write(&updated)
}
