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

/// execjob_launch: `KEY=VALUE` lines for the job's environment. Root reads inside a
/// directory the user owns, so every step is opened relative to the last without following
/// symlinks, and the job directory must belong to the job's owner.
pub fn launch_env(hooks: &HookSettings, job: &JobRef) -> Result<Vec<(String, String)>> {
    let paths = job.paths(&hooks.stage_dir)?;
    let Some(dir) = open_job_dir(&hooks.stage_dir, job) else {
        return Ok(Vec::new());
    };
    let is_regular = |name: &str| {
        open_in(&dir, name)
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.file_type().is_file())
    };
    if is_regular("access_token") {
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
    let reason_name = paths
        .reason_file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("not-staged.txt");
    if let Some(reason) = open_in(&dir, reason_name).and_then(read_small_regular_file) {
        let one_line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        return Ok(vec![(
            "QLAM_HPC_MESSAGE".to_string(),
            format!("qlam-hpc: no QLAM token was staged for this job: {one_line}"),
        )]);
    }
    Ok(Vec::new())
}

fn nofollow(dir: bool) -> nix::fcntl::OFlag {
    use nix::fcntl::OFlag;
    let base = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    if dir { base | OFlag::O_DIRECTORY } else { base }
}

/// `<stage_dir>/<uid>/<job>-<node>`, opened step by step without following symlinks; `None`
/// unless it is a directory owned by the job's owner.
fn open_job_dir(stage_dir: &Path, job: &JobRef) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let root = nix::fcntl::open(stage_dir, nofollow(true), nix::sys::stat::Mode::empty()).ok()?;
    let user = nix::fcntl::openat(
        &root,
        job.uid.to_string().as_str(),
        nofollow(true),
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let name = job.paths(stage_dir).ok()?.dir.file_name()?.to_os_string();
    let dir = std::fs::File::from(
        nix::fcntl::openat(
            &user,
            name.as_os_str(),
            nofollow(true),
            nix::sys::stat::Mode::empty(),
        )
        .ok()?,
    );
    let meta = dir.metadata().ok()?;
    (meta.is_dir() && meta.uid() == job.uid).then_some(dir)
}

/// A file inside an opened directory, without following a symlink.
fn open_in(dir: &std::fs::File, name: &str) -> Option<std::fs::File> {
    nix::fcntl::openat(dir, name, nofollow(false), nix::sys::stat::Mode::empty())
        .ok()
        .map(std::fs::File::from)
}

/// At most 4 KiB of an opened file, if it is a regular file.
fn read_small_regular_file(f: std::fs::File) -> Option<String> {
    use std::io::Read;
    if !f.metadata().ok()?.file_type().is_file() {
        return None;
    }
    let mut text = String::new();
    f.take(4096).read_to_string(&mut text).ok()?;
    Some(text)
}
