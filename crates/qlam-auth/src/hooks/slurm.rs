//! The root side of the hooks, shared by Slurm and PBS: find the job and its user, prepare
//! the node-local staging root without following symlinks, and run the user-side work
//! (`qlam-hpc hook stage-as-user` etc.) in a child that has dropped to the job's user.
//! Plus Slurm's specifics: where the job id, user and node name come from, the job's end
//! time, and the TaskProlog's `export` lines.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::HookSettings;
use crate::context::Ctx;
use crate::env_vars::EnvVars;
use crate::error::{Error, Result};
use crate::hooks::stage::StagePaths;
use crate::hooks::{HookOutcome, JobUser, privs};

/// The batch system a hook serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Slurm.
    Slurm,
    /// OpenPBS, PBS Pro or Torque.
    Pbs,
}

impl Scheduler {
    /// The variable that carries the job id in a job's environment.
    pub fn job_id_var(self) -> &'static str {
        match self {
            Scheduler::Slurm => EnvVars::SLURM_JOB_ID,
            Scheduler::Pbs => EnvVars::PBS_JOBID,
        }
    }
}

/// A job on this node, as a hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    /// Which scheduler runs the job.
    pub scheduler: Scheduler,
    /// Scheduler job id.
    pub job_id: String,
    /// The job owner's uid.
    pub uid: u32,
    /// This node's name (several slurmd may share a host).
    pub node: String,
}

/// Exit status of `stage-as-user` when the user has no QLAM configuration at all.
pub const EXIT_NOT_CONFIGURED: i32 = 3;
/// Exit status of `stage-as-user` when the user must log in (reason recorded for the job).
pub const EXIT_LOGIN_REQUIRED: i32 = 41;

impl JobRef {
    /// From a Slurm Prolog/Epilog environment (`SLURM_JOB_ID`, `SLURM_JOB_UID`,
    /// `SLURMD_NODENAME`).
    pub fn from_slurm(ctx: &Ctx) -> Result<JobRef> {
        let job_id = ctx
            .var(EnvVars::SLURM_JOB_ID)
            .ok_or_else(|| {
                Error::config("SLURM_JOB_ID is not set: run this as a Slurm Prolog/Epilog")
            })?
            .to_string();
        let uid = match ctx.var(EnvVars::SLURM_JOB_UID) {
            Some(u) => u
                .parse()
                .map_err(|_| Error::config(format!("SLURM_JOB_UID {u:?} is not a number")))?,
            None => ctx.uid,
        };
        let node = ctx
            .var(EnvVars::SLURMD_NODENAME)
            .unwrap_or(&ctx.hostname)
            .to_string();
        Ok(JobRef {
            scheduler: Scheduler::Slurm,
            job_id,
            uid,
            node,
        })
    }

    /// The staged paths of this job under `stage_dir`.
    pub fn paths(&self, stage_dir: &Path) -> Result<StagePaths> {
        StagePaths::new(stage_dir, self.uid, &self.job_id, &self.node)
    }
}

/// The job's end time (unix seconds): `SLURM_JOB_END_TIME` when Slurm provides it, else
/// `EndTime` from `scontrol show job`, else `None` (unknown: stage for a day and renew).
pub fn slurm_job_end(ctx: &Ctx, job_id: &str) -> Option<f64> {
    if let Some(end) = ctx
        .var(EnvVars::SLURM_JOB_END_TIME)
        .and_then(|v| v.parse::<f64>().ok())
    {
        return Some(end);
    }
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", job_id])
        .env_clear()
        .envs(
            ctx.vars()
                .iter()
                .filter(|(k, _)| k.starts_with("SLURM_CONF") || k.as_str() == "PATH"),
        )
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let end = text
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("EndTime="))?;
    let naive = chrono::NaiveDateTime::parse_from_str(end, "%Y-%m-%dT%H:%M:%S").ok()?;
    use chrono::TimeZone;
    chrono::Local
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.timestamp() as f64)
}

/// Create `dir` if missing with `mode`, refusing symlinks and anything not owned by `owner`.
fn ensure_dir_owned(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => check_dir_owned(dir, &meta, owner),
        Err(_) => {
            // Build the directory complete (mode, owner) under a temporary name, then move it
            // into place without replacing anything: a concurrent hook sees either nothing or
            // the finished directory, never a root-owned one half-way through.
            let parent = dir.parent().unwrap_or(Path::new("/"));
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
            let tmp = parent.join(format!(
                ".{name}.tmp.{}.{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(&tmp)
                .map_err(|e| Error::store(format!("cannot create {}: {e}", tmp.display())))?;
            let built = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::store(format!("cannot chmod {}: {e}", tmp.display())))
                .and_then(|()| match owner {
                    Some((uid, gid)) => std::os::unix::fs::lchown(&tmp, Some(uid), Some(gid))
                        .map_err(|e| Error::store(format!("cannot chown {}: {e}", tmp.display()))),
                    None => Ok(()),
                });
            if let Err(e) = built {
                let _ = std::fs::remove_dir(&tmp);
                return Err(e);
            }
            let moved = nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &tmp,
                nix::fcntl::AT_FDCWD,
                dir,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            );
            match moved {
                Ok(()) => Ok(()),
                Err(nix::errno::Errno::EEXIST) => {
                    // Another hook won the race: use its directory.
                    let _ = std::fs::remove_dir(&tmp);
                    let meta = std::fs::symlink_metadata(dir)
                        .map_err(|e| Error::store(format!("cannot stat {}: {e}", dir.display())))?;
                    check_dir_owned(dir, &meta, owner)
                }
                Err(e) => {
                    let _ = std::fs::remove_dir(&tmp);
                    Err(Error::store(format!(
                        "cannot create {}: {e}",
                        dir.display()
                    )))
                }
            }
        }
    }
}

fn check_dir_owned(dir: &Path, meta: &std::fs::Metadata, owner: Option<(u32, u32)>) -> Result<()> {
    if !meta.file_type().is_dir() {
        return Err(Error::store(format!(
            "{} is not a directory (symlinks are refused)",
            dir.display()
        )));
    }
    let want_uid = owner.map_or_else(|| nix::unistd::geteuid().as_raw(), |o| o.0);
    if meta.uid() != want_uid {
        return Err(Error::store(format!(
            "{} is owned by uid {}, expected {want_uid}",
            dir.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Prepare `<stage_dir>` (root's, 0755) and `<stage_dir>/<uid>` (the user's, 0700).
pub fn prepare_stage_root(stage_dir: &Path, user: &JobUser) -> Result<PathBuf> {
    let as_root = nix::unistd::geteuid().is_root();
    if let Some(parent) = stage_dir.parent()
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| Error::store(format!("cannot create {}: {e}", parent.display())))?;
    }
    ensure_dir_owned(stage_dir, 0o755, None)?;
    let user_dir = stage_dir.join(user.uid.to_string());
    ensure_dir_owned(&user_dir, 0o700, as_root.then_some((user.uid, user.gid)))?;
    Ok(user_dir)
}

/// A minimal, predictable environment for the user-side child.
fn user_env(ctx: &Ctx, user: &JobUser, job: &JobRef) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_string(), user.home.display().to_string()),
        ("USER".to_string(), user.name.clone()),
        ("LOGNAME".to_string(), user.name.clone()),
        (
            "PATH".to_string(),
            ctx.var("PATH")
                .unwrap_or("/usr/local/bin:/usr/bin:/bin")
                .to_string(),
        ),
        (job.scheduler.job_id_var().to_string(), job.job_id.clone()),
    ];
    for k in [
        EnvVars::QLAM_HPC_SITE_CONFIG,
        EnvVars::SSL_CERT_FILE,
        EnvVars::SSL_CERT_DIR,
        EnvVars::HTTPS_PROXY,
        EnvVars::NO_PROXY,
        EnvVars::QLAM_HPC_RUNTIME_DIR,
        EnvVars::QLAM_REFRESH_DEADLINE,
        EnvVars::QLAM_LOCK_TIMEOUT,
    ] {
        if let Some(v) = ctx.var(k) {
            env.push((k.to_string(), v.to_string()));
        }
    }
    env
}

/// Run `exe hook <action> --job --node [--end]` as the job's user and interpret its status.
pub fn run_user_side(
    ctx: &Ctx,
    exe: &Path,
    action: &str,
    job: &JobRef,
    user: &JobUser,
    end: Option<f64>,
) -> Result<HookOutcome> {
    let mut cmd = Command::new(exe);
    cmd.args([
        super::INTERNAL_CMD,
        action,
        "--job",
        &job.job_id,
        "--node",
        &job.node,
    ]);
    if let Some(e) = end {
        cmd.args(["--end", &format!("{}", e.floor() as i64)]);
    }
    cmd.env_clear()
        .envs(user_env(ctx, user, job))
        .current_dir("/")
        .stdin(Stdio::null());
    privs::run_as(&mut cmd, user);
    let out = cmd.output().map_err(|e| {
        Error::internal(format!(
            "cannot run {} as {}: {e}",
            exe.display(),
            user.name
        ))
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr)
        .trim()
        .replace('\n', " | ");
    match out.status.code() {
        Some(0) => Ok(HookOutcome::Done(stdout)),
        Some(EXIT_NOT_CONFIGURED) => Ok(HookOutcome::Skipped(format!(
            "user {} has no QLAM configuration",
            user.name
        ))),
        Some(code) => Err(Error::new(
            crate::error::ErrorKind::Internal,
            format!("as user {}: {stderr} (exit {code})", user.name),
        )),
        None => Err(Error::internal(format!(
            "the user-side hook for {} was killed",
            user.name
        ))),
    }
}

/// Slurm Prolog (root): stage for the job's user.
pub fn prolog(ctx: &Ctx, hooks: &HookSettings, exe: &Path) -> Result<HookOutcome> {
    let job = JobRef::from_slurm(ctx)?;
    let user = JobUser::lookup(job.uid)?;
    prepare_stage_root(&hooks.stage_dir, &user)?;
    let end = slurm_job_end(ctx, &job.job_id);
    run_user_side(ctx, exe, "stage-as-user", &job, &user, end)
}

/// Slurm Epilog (root): stop the renewer and remove the staged directory, as the user.
pub fn epilog(ctx: &Ctx, hooks: &HookSettings, exe: &Path) -> Result<HookOutcome> {
    let job = JobRef::from_slurm(ctx)?;
    let user = JobUser::lookup(job.uid)?;
    let user_dir = hooks.stage_dir.join(job.uid.to_string());
    if !user_dir.is_dir() {
        return Ok(HookOutcome::Skipped("nothing staged".into()));
    }
    let outcome = run_user_side(ctx, exe, "unstage-as-user", &job, &user, None)?;
    // <stage_dir>/<uid> stays: another job's Prolog of the same user may be using it.
    Ok(outcome)
}

/// Slurm TaskProlog (user): the lines to print. `export` lines when a token is staged, a
/// `print` line with the reason when staging failed for a QLAM user, nothing otherwise.
pub fn task_prolog_lines(ctx: &Ctx, hooks: &HookSettings) -> Result<Vec<String>> {
    let job = JobRef::from_slurm(ctx)?;
    let paths = job.paths(&hooks.stage_dir)?;
    if paths.is_staged() {
        return Ok(vec![
            format!("export {}={}", EnvVars::QSH_CONFIG_DIR, paths.dir.display()),
            format!(
                "export {}={}",
                EnvVars::QLAM_ACCESS_TOKEN_FILE,
                paths.token_file.display()
            ),
        ]);
    }
    if let Ok(reason) = std::fs::read_to_string(&paths.reason_file) {
        return Ok(vec![format!(
            "print qlam-hpc: no QLAM token was staged for this job: {}",
            reason.trim()
        )]);
    }
    Ok(Vec::new())
}

/// Seconds left in the batch job this process runs in, when the scheduler tells: Slurm's
/// end time (see [`slurm_job_end`]); PBS/Torque's `qstat -f` walltime limit minus walltime
/// used, or, without `qstat`, the whole `PBS_WALLTIME` (seconds). `None` outside a job or
/// when unknown.
pub fn job_remaining(ctx: &Ctx) -> Option<f64> {
    let now = ctx.now_unix();
    if let Some(job) = ctx.var(EnvVars::SLURM_JOB_ID) {
        return slurm_job_end(ctx, job).map(|end| end - now);
    }
    let job = ctx.var(EnvVars::PBS_JOBID)?;
    let out = Command::new("qstat")
        .args(["-f", job])
        .env_clear()
        .envs(
            ctx.vars()
                .iter()
                .filter(|(k, _)| k.starts_with("PBS_") || k.as_str() == "PATH"),
        )
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(name)
                    .and_then(|r| r.trim().strip_prefix('='))
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| parse_hms(&v))
    };
    let limit = field("Resource_List.walltime")
        .or_else(|| ctx.var(EnvVars::PBS_WALLTIME).and_then(|w| w.parse().ok()))?;
    let used = field("resources_used.walltime").unwrap_or(0.0);
    Some(limit - used)
}

/// `[[HH:]MM:]SS` or `D-HH:MM:SS` to seconds.
pub fn parse_hms(s: &str) -> Option<f64> {
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<f64>().ok()?, r),
        None => (0.0, s),
    };
    let mut total = 0.0;
    for part in rest.split(':') {
        total = total * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(days * 86_400.0 + total)
}

#[cfg(test)]
mod tests {
    use super::parse_hms;

    #[test]
    fn walltimes() {
        assert_eq!(parse_hms("01:00:00"), Some(3600.0));
        assert_eq!(parse_hms("1-00:00:10"), Some(86_410.0));
        assert_eq!(parse_hms("90"), Some(90.0));
        assert_eq!(parse_hms("5:00"), Some(300.0));
        assert_eq!(parse_hms("UNLIMITED"), None);
    }
}
