//! The PBS side (OpenPBS / PBS Pro hook events and Torque prologue/epilogue): the job id,
//! owner and walltime come as arguments from the PBS hook or Torque's positional arguments;
//! the staging itself is shared with Slurm (see `slurm::run_user_side` and `stage`).

use std::path::Path;

use crate::config::HookSettings;
use crate::context::Ctx;
use crate::env_vars::EnvVars;
use crate::error::{Error, Result};
use crate::hooks::slurm::{self, JobRef, Scheduler};
use crate::hooks::{HookOutcome, JobUser};

/// This host's short name (up to the first dot), as job scripts compute it with `hostname -s`.
pub fn short_hostname(ctx: &Ctx) -> String {
    ctx.hostname
        .split('.')
        .next()
        .unwrap_or(&ctx.hostname)
        .to_string()
}

/// Look up the job owner by name and describe the job on this node.
pub fn job(ctx: &Ctx, job_id: &str, user: &str, node: Option<&str>) -> Result<(JobRef, JobUser)> {
    let entry = nix::unistd::User::from_name(user)
        .map_err(|e| Error::config(format!("cannot look up user {user:?}: {e}")))?
        .ok_or_else(|| {
            Error::config(format!("user {user:?} has no password entry on this node"))
        })?;
    let job_user = JobUser::lookup(entry.uid.as_raw())?;
    let node = node
        .map(str::to_string)
        .unwrap_or_else(|| short_hostname(ctx));
    Ok((
        JobRef {
            scheduler: Scheduler::Pbs,
            job_id: job_id.to_string(),
            uid: job_user.uid,
            node,
        },
        job_user,
    ))
}

/// execjob_prologue / Torque prologue (root): stage for the job's owner.
pub fn prologue(
    ctx: &Ctx,
    hooks: &HookSettings,
    exe: &Path,
    job: &JobRef,
    user: &JobUser,
    end: Option<f64>,
) -> Result<HookOutcome> {
    slurm::prepare_stage_root(&hooks.stage_dir, user)?;
    slurm::run_user_side(ctx, exe, "stage-as-user", job, user, end)
}

/// execjob_epilogue / Torque epilogue (root): stop the renewer and remove the staged copy.
pub fn epilogue(
    ctx: &Ctx,
    hooks: &HookSettings,
    exe: &Path,
    job: &JobRef,
    user: &JobUser,
) -> Result<HookOutcome> {
    let user_dir = hooks.stage_dir.join(user.uid.to_string());
    if !user_dir.is_dir() {
        return Ok(HookOutcome::Skipped("nothing staged".into()));
    }
    let outcome = slurm::run_user_side(ctx, exe, "unstage-as-user", job, user, None)?;
    // <stage_dir>/<uid> stays: another job's Prolog of the same user may be using it.
    Ok(outcome)
}

/// execjob_launch: `KEY=VALUE` lines for the job's environment.
pub fn launch_env(hooks: &HookSettings, job: &JobRef) -> Result<Vec<(String, String)>> {
    let paths = job.paths(&hooks.stage_dir)?;
    let token_is_file =
        std::fs::symlink_metadata(&paths.token_file).is_ok_and(|m| m.file_type().is_file());
    if token_is_file {
        return Ok(vec![
            (
                EnvVars::QSH_CONFIG_DIR.to_string(),
                paths.dir.display().to_string(),
            ),
            (
                EnvVars::QLAM_ACCESS_TOKEN_FILE.to_string(),
                paths.token_file.display().to_string(),
            ),
        ]);
    }
    // Root reads a file in a directory the user owns: never through a symlink, and only a
    // small regular file.
    if let Some(reason) = read_small_regular_file(&paths.reason_file) {
        let one_line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        return Ok(vec![(
            "QLAM_HPC_MESSAGE".to_string(),
            format!("qlam-hpc: no QLAM token was staged for this job: {one_line}"),
        )]);
    }
    Ok(Vec::new())
}

/// Read at most 4 KiB of `path` if it is a regular file, opening it with `O_NOFOLLOW` and
/// checking the opened file itself (no window between a check and the read).
fn read_small_regular_file(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.file_type().is_file() {
        return None;
    }
    let mut text = String::new();
    f.take(4096).read_to_string(&mut text).ok()?;
    Some(text)
}
