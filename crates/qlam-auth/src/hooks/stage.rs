//! The user side of the hooks: stage an access-token-only copy of the credentials in QLAM
//! Core's layout (`config.json` + `credentials/<file>`, plus a plain token file) in a
//! node-local, job-private directory; keep it renewed while the job runs; remove it.
//! Everything here runs as the job's user. The refresh token never enters the directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::session::Session;
use crate::store::format::{Extra, HpcMeta, StoreFile};
use crate::store::fsutil;
use crate::store::single_flight::effective_min_ttl;
use crate::store::{cache_key, file_name};

/// The files of one job's staged copy on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePaths {
    /// `<stage_dir>/<uid>/<jobid>-<node>`: becomes the job's `QSH_CONFIG_DIR`.
    pub dir: PathBuf,
    /// The plain access token (`QLAM_ACCESS_TOKEN_FILE`).
    pub token_file: PathBuf,
    /// The staged token's expiry in unix seconds.
    pub expires_file: PathBuf,
    /// Why nothing was staged, for the job to read.
    pub reason_file: PathBuf,
    /// The renewer's pid.
    pub renewer_pid_file: PathBuf,
}

/// Characters allowed in path components built from scheduler-provided names.
fn safe_component(s: &str) -> Result<&str> {
    if s.is_empty()
        || s == "."
        || s == ".."
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-[]".contains(c))
    {
        return Err(Error::config(format!(
            "refusing the unusual job or node name {s:?} in a path"
        )));
    }
    Ok(s)
}

impl StagePaths {
    /// The paths for `job_id` of `uid` on `node` under `stage_dir`.
    pub fn new(stage_dir: &Path, uid: u32, job_id: &str, node: &str) -> Result<StagePaths> {
        let dir = stage_dir.join(uid.to_string()).join(format!(
            "{}-{}",
            safe_component(job_id)?,
            safe_component(node)?
        ));
        Ok(StagePaths {
            token_file: dir.join("access_token"),
            expires_file: dir.join("expires_at"),
            reason_file: dir.join("not-staged.txt"),
            renewer_pid_file: dir.join("renewer.pid"),
            dir,
        })
    }

    /// Whether a token is staged.
    pub fn is_staged(&self) -> bool {
        self.token_file.is_file()
    }
}

/// Create the job directory (0700, the user's own) without following symlinks: an existing
/// entry that is not a plain directory of ours is refused.
fn make_job_dir(dir: &Path, uid: u32) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.file_type().is_dir() {
                return Err(Error::store(format!(
                    "{} exists and is not a directory",
                    dir.display()
                )));
            }
            fsutil::check_private(dir, &meta, uid)
        }
        Err(_) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::store(format!("cannot create {}: {e}", dir.display())))
        }
    }
}

/// The staged copy of `file`: the access token only (no refresh or ID token), metadata
/// reduced to the generation.
pub fn access_token_only(file: &StoreFile) -> StoreFile {
    let mut staged = file.clone();
    let generation = file.generation();
    let token_data = file.token().cloned().map(|mut t| {
        t.refresh_token = None;
        t.id_token = None;
        t
    });
    staged.extra = Some(Extra {
        token_data,
        qlam_hpc: Some(HpcMeta {
            generation,
            ..HpcMeta::default()
        }),
        other: Default::default(),
    });
    staged
}

/// Write the staged files for `file` into `paths` (creating the directory).
pub fn write_staged(session: &Session, paths: &StagePaths, file: &StoreFile) -> Result<()> {
    make_job_dir(&paths.dir, session.ctx.uid)?;
    let token = file
        .token()
        .ok_or_else(|| Error::store("the credentials file holds no token"))?
        .access_token
        .clone();
    let creds = paths.dir.join("credentials");
    make_job_dir(&creds, session.ctx.uid)?;
    let settings = &session.settings;
    let staged = access_token_only(file);
    fsutil::write_atomic(
        &creds.join(file_name(&cache_key(
            &settings.context,
            &settings.provider_name,
        ))),
        &staged.to_json(),
        0o600,
        false,
    )?;
    let config = crate::config::qsh::minimal_config_json(
        &settings.context,
        &settings.provider_name,
        &settings.provider,
    );
    fsutil::write_atomic(
        &paths.dir.join("config.json"),
        config.as_bytes(),
        0o600,
        false,
    )?;
    fsutil::write_atomic(
        &paths.token_file,
        format!("{}\n", token.expose()).as_bytes(),
        0o600,
        false,
    )?;
    // The expiry beside it, for job scripts that export QLAM_TOKEN_EXPIRES_AT.
    let expires = file.expires_at_unix().map_or(0, |e| e.floor() as i64);
    fsutil::write_atomic(
        &paths.expires_file,
        format!("{expires}\n").as_bytes(),
        0o600,
        false,
    )?;
    let _ = std::fs::remove_file(&paths.reason_file);
    Ok(())
}

/// Record why nothing was staged, so the job can tell its user.
pub fn write_reason(paths: &StagePaths, uid: u32, reason: &str) -> Result<()> {
    make_job_dir(&paths.dir, uid)?;
    fsutil::write_atomic(
        &paths.reason_file,
        format!("{reason}\n").as_bytes(),
        0o600,
        false,
    )
}

/// How long the staged token must last: the job's remaining time, at least 5 minutes.
pub fn wanted_ttl(now: f64, job_end: Option<f64>) -> Duration {
    let secs = job_end.map_or(24.0 * 3600.0, |end| (end - now).max(0.0));
    Duration::from_secs_f64(secs.max(300.0))
}

/// What staging produced.
#[derive(Debug, Clone)]
pub struct Staged {
    /// Expiry of the staged token (unix seconds).
    pub expires_at: f64,
    /// Whether the job may outlive it, so a renewer is needed.
    pub needs_renewer: bool,
}

/// Ensure a token valid for the job (capped at what the IdP issues) through the shared
/// store and stage it.
pub fn stage(session: &Session, paths: &StagePaths, job_end: Option<f64>) -> Result<Staged> {
    let now = session.ctx.now_unix();
    let ensured = session.ensure(wanted_ttl(now, job_end), false)?;
    write_staged(session, paths, &ensured.file)?;
    let expires_at = ensured.file.expires_at_unix().unwrap_or(f64::MAX);
    let needs_renewer = job_end.is_none_or(|end| end > expires_at - 60.0);
    Ok(Staged {
        expires_at,
        needs_renewer,
    })
}

/// The renewer's loop: rewrite the staged files before the staged token expires, through the
/// shared store's single-flight refresh, until the job ends (`until`) or the directory goes
/// away. `sleep` is injected so tests can run it fast.
pub fn renew_loop(
    session: &Session,
    paths: &StagePaths,
    until: Option<f64>,
    sleep: &dyn Fn(Duration),
) -> Result<()> {
    loop {
        if !paths.dir.is_dir() {
            return Ok(());
        }
        let now = session.ctx.now_unix();
        if until.is_some_and(|u| now >= u) {
            return Ok(());
        }
        let staged = std::fs::read(paths.dir.join("credentials").join(file_name(&cache_key(
            &session.settings.context,
            &session.settings.provider_name,
        ))))
        .ok()
        .and_then(|b| crate::store::Store::parse(&b, &paths.dir).ok());
        // Renew when less than the threshold is left: up to 10 minutes (QLAM Core itself
        // treats tokens as expired 5 minutes early), never more than the job still needs,
        // capped at half the IdP's lifetime exactly as `ensure` caps it, so that a wake-up
        // always finds `ensure` willing to refresh (no busy loop).
        let want = wanted_ttl(now, until).min(Duration::from_secs(600));
        let (expires, threshold) = match &staged {
            Some(f) => (
                f.expires_at_unix().unwrap_or(f64::MAX),
                effective_min_ttl(f, want),
            ),
            None => (now, want.as_secs_f64()),
        };
        let wake = expires - threshold;
        if now >= wake {
            match session.ensure(Duration::from_secs_f64(threshold), false) {
                Ok(e) => {
                    let renewed = e.file.expires_at_unix().unwrap_or(f64::MAX) != expires;
                    write_staged(session, paths, &e.file)?;
                    if !renewed {
                        // The store's token is the staged one (e.g. the IdP issued no longer
                        // token yet): try again a little later instead of spinning.
                        sleep(Duration::from_secs(5));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Auth => return Err(e),
                Err(_) => sleep(Duration::from_secs(30)),
            }
            continue;
        }
        // Wake at the renewal point, but check regularly that the job is still there.
        sleep(Duration::from_secs_f64((wake - now).clamp(1.0, 60.0)));
    }
}

/// Stop the renewer (if it is ours and alive) and remove the job directory.
pub fn unstage(paths: &StagePaths) -> Result<bool> {
    if let Ok(text) = std::fs::read_to_string(&paths.renewer_pid_file)
        && let Ok(pid) = text.trim().parse::<i32>()
    {
        let is_renewer = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("renew-as-user"))
            .unwrap_or(false);
        if pid > 1 && is_renewer {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    match std::fs::symlink_metadata(&paths.dir) {
        Ok(m) if m.file_type().is_dir() => {
            // remove_dir_all does not follow symlinks inside the tree.
            std::fs::remove_dir_all(&paths.dir)
                .map_err(|e| Error::store(format!("cannot remove {}: {e}", paths.dir.display())))?;
            Ok(true)
        }
        Ok(_) => {
            let _ = std::fs::remove_file(&paths.dir);
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}
