//! `hook NAME`: the scheduler entry points. Root-side hooks log one line to stderr (the
//! scheduler's log) and never fail the node unless the site sets `enforce = true`; the
//! user-side steps (`stage-as-user`, `renew-as-user`, `unstage-as-user`) are run by them in
//! a child that has dropped to the job's user.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use qlam_auth::config::{self, HookSettings, Overrides, QshPaths};
use qlam_auth::hooks::slurm::{self, EXIT_LOGIN_REQUIRED, EXIT_NOT_CONFIGURED};
use qlam_auth::hooks::stage::{self, StagePaths};
use qlam_auth::hooks::{HookOutcome, pbs, privs};
use qlam_auth::session::Session;
use qlam_auth::{Ctx, Error, ErrorKind};

use crate::cli::{HookArgs, HookName};
use crate::output::Printer;

fn exe() -> Result<PathBuf, Error> {
    std::env::current_exe()
        .map_err(|e| Error::internal(format!("cannot find the qlam-hpc binary: {e}")))
}

fn log(printer: &Printer, name: &str, text: &str) {
    log_to(printer, None, name, text);
}

/// One log line: always to stderr (the scheduler keeps it where it keeps hook output), and
/// appended to the site's `[hooks] log_file` when one is set.
fn log_to(printer: &Printer, file: Option<&std::path::Path>, name: &str, text: &str) {
    let _ = printer;
    use std::io::Write;
    let line = format!("qlam-hpc hook {name}: {text}");
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    if let Some(path) = file {
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            let now = qlam_auth::store::format::iso_unix(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            );
            let _ = writeln!(f, "{now} {line}");
        }
    }
}

/// Run a root-side hook under the site's failure policy.
fn root_hook(
    ctx: &Ctx,
    name: &str,
    printer: &Printer,
    f: impl FnOnce(&Ctx, &HookSettings) -> Result<HookOutcome, Error>,
    may_enforce: bool,
    label: Option<&str>,
) -> i32 {
    let hooks = match config::load_hook_settings(ctx) {
        Ok(h) => h,
        Err(e) => {
            log(
                printer,
                name,
                &format!("site configuration error: {}", e.message()),
            );
            return 0;
        }
    };
    let job = label
        .map(str::to_string)
        .or_else(|| ctx.job_id())
        .unwrap_or_else(|| "?".into());
    match f(ctx, &hooks) {
        Ok(HookOutcome::Done(line)) => {
            log_to(
                printer,
                hooks.log_file.as_deref(),
                name,
                &format!("job {job}: {line}"),
            );
            0
        }
        Ok(HookOutcome::Skipped(line)) => {
            log_to(
                printer,
                hooks.log_file.as_deref(),
                name,
                &format!("job {job}: nothing staged: {line}"),
            );
            0
        }
        Err(e) => {
            let enforce = may_enforce && hooks.enforce;
            log_to(
                printer,
                hooks.log_file.as_deref(),
                name,
                &format!(
                    "job {job}: {}{}",
                    e.message(),
                    if enforce {
                        " (enforced: failing the job)"
                    } else {
                        ""
                    }
                ),
            );
            if enforce { 1 } else { 0 }
        }
    }
}

fn job_paths(ctx: &Ctx, args: &HookArgs) -> Result<(HookSettings, StagePaths, Option<f64>), Error> {
    let hooks = config::load_hook_settings(ctx)?;
    let job = args
        .job
        .as_deref()
        .ok_or_else(|| Error::new(ErrorKind::Usage, "--job is required"))?;
    let node = args.node.clone().unwrap_or_else(|| ctx.hostname.clone());
    let paths = StagePaths::new(&hooks.stage_dir, ctx.uid, job, &node)?;
    Ok((hooks, paths, args.end.map(|e| e as f64)))
}

/// Whether this user uses QLAM at all: a qsh config, a qlam-hpc config or credentials.
fn is_qlam_user(ctx: &Ctx) -> bool {
    let qsh = QshPaths::from_ctx(ctx);
    let user_cfg = ctx.home.join(".config/qlam-hpc/config.toml");
    qsh.config_file.exists() || qsh.credentials_dir.is_dir() || user_cfg.exists()
}

pub(crate) fn stage_as_user(ctx: Ctx, args: &HookArgs, printer: &Printer) -> Result<i32, Error> {
    let (_hooks, paths, end) = job_paths(&ctx, args)?;
    if !is_qlam_user(&ctx) {
        return Ok(EXIT_NOT_CONFIGURED);
    }
    let uid = ctx.uid;
    let record = |e: &Error| {
        let hint = e.hint().map(|h| format!(" ({h})")).unwrap_or_default();
        let _ = stage::write_reason(&paths, uid, &format!("{}{hint}", e.message()));
    };
    let settings = match config::load(&ctx, &Overrides::default()) {
        Ok(s) => s,
        Err(e) => {
            record(&e);
            return Err(e);
        }
    };
    let session = Session::new(ctx, settings);
    match stage::stage(&session, &paths, end) {
        Ok(staged) => {
            let mut line = format!(
                "staged a token valid until {} in {}",
                qlam_auth::store::format::iso_unix(staged.expires_at),
                paths.dir.display()
            );
            if staged.needs_renewer {
                let mut cmd = Command::new(exe()?);
                cmd.args([
                    qlam_auth::hooks::INTERNAL_CMD,
                    "renew-as-user",
                    "--job",
                    args.job.as_deref().unwrap_or_default(),
                ]);
                if let Some(n) = &args.node {
                    cmd.args(["--node", n]);
                }
                if let Some(e) = args.end {
                    cmd.args(["--end", &e.to_string()]);
                }
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                privs::detach(&mut cmd);
                let child = cmd
                    .spawn()
                    .map_err(|e| Error::internal(format!("cannot start the renewer: {e}")))?;
                qlam_auth::store::fsutil::write_atomic(
                    &paths.renewer_pid_file,
                    format!("{}\n", child.id()).as_bytes(),
                    0o600,
                    false,
                )?;
                line.push_str(&format!("; renewer pid {}", child.id()));
            }
            printer.result(&format!("{line}\n"));
            Ok(0)
        }
        Err(e) => {
            record(&e);
            if e.kind() == ErrorKind::Auth {
                printer.error(&e);
                return Ok(EXIT_LOGIN_REQUIRED);
            }
            Err(e)
        }
    }
}

pub(crate) fn renew_as_user(ctx: Ctx, args: &HookArgs) -> Result<i32, Error> {
    let (_hooks, paths, end) = job_paths(&ctx, args)?;
    let settings = config::load(&ctx, &Overrides::default())?;
    let session = Session::new(ctx, settings);
    stage::renew_loop(&session, &paths, end, &|d: Duration| std::thread::sleep(d))?;
    Ok(0)
}

pub(crate) fn unstage_as_user(ctx: Ctx, args: &HookArgs, printer: &Printer) -> Result<i32, Error> {
    let (_hooks, paths, _end) = job_paths(&ctx, args)?;
    let removed = stage::unstage(&paths)?;
    printer.result(if removed {
        "removed the staged token\n"
    } else {
        "nothing was staged\n"
    });
    Ok(0)
}

/// `--job` and `--user`, which every PBS hook needs.
fn pbs_job_and_user(args: &HookArgs) -> Result<(String, String), Error> {
    let required = |v: &Option<String>, flag: &str| {
        v.clone()
            .ok_or_else(|| Error::new(ErrorKind::Usage, format!("{flag} is required")))
    };
    Ok((
        required(&args.job, "--job")?,
        required(&args.user, "--user")?,
    ))
}

/// Run hook `name`.
pub(crate) fn run(
    name: HookName,
    args: &HookArgs,
    ctx: Ctx,
    printer: &Printer,
) -> Result<i32, Error> {
    match name {
        HookName::SlurmProlog => {
            let exe = exe()?;
            Ok(root_hook(
                &ctx,
                "slurm-prolog",
                printer,
                |c, h| slurm::prolog(c, h, &exe),
                true,
                None,
            ))
        }
        HookName::SlurmEpilog => {
            let exe = exe()?;
            Ok(root_hook(
                &ctx,
                "slurm-epilog",
                printer,
                |c, h| slurm::epilog(c, h, &exe),
                false,
                None,
            ))
        }
        HookName::SlurmTaskProlog => {
            match config::load_hook_settings(&ctx).and_then(|h| slurm::task_prolog_lines(&ctx, &h))
            {
                Ok(lines) => {
                    let mut out = String::new();
                    for l in lines {
                        out.push_str(&l);
                        out.push('\n');
                    }
                    printer.result(&out);
                }
                Err(e) => log(printer, "slurm-task-prolog", e.message()),
            }
            Ok(0)
        }
        HookName::PbsPrologue | HookName::PbsEpilogue => {
            let (job_id, user) = pbs_job_and_user(args)?;
            let end = match &args.walltime {
                Some(w) => Some(
                    ctx.now_unix()
                        + qlam_auth::hooks::slurm::parse_hms(w).ok_or_else(|| {
                            Error::new(
                                ErrorKind::Usage,
                                format!("--walltime {w:?} is not HH:MM:SS"),
                            )
                        })?,
                ),
                None => args.end.map(|e| e as f64),
            };
            let exe = exe()?;
            let prologue = name == HookName::PbsPrologue;
            let label = job_id.clone();
            let hook_name = if prologue {
                "pbs-prologue"
            } else {
                "pbs-epilogue"
            };
            Ok(root_hook(
                &ctx,
                hook_name,
                printer,
                |c, h| {
                    let (job, user) = pbs::job(c, &job_id, &user, args.node.as_deref())?;
                    if prologue {
                        pbs::prologue(c, h, &exe, &job, &user, end)
                    } else {
                        pbs::epilogue(c, h, &exe, &job, &user)
                    }
                },
                prologue,
                Some(&label),
            ))
        }
        HookName::PbsLaunch => {
            let (job_id, user) = pbs_job_and_user(args)?;
            let lines = config::load_hook_settings(&ctx).and_then(|h| {
                let (job, _) = pbs::job(&ctx, &job_id, &user, args.node.as_deref())?;
                pbs::launch_env(&h, &job)
            });
            match lines {
                Ok(lines) => {
                    let out: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                    printer.result(&out);
                }
                Err(e) => log(
                    printer,
                    "pbs-launch",
                    &format!("job {job_id}: {}", e.message()),
                ),
            }
            Ok(0)
        }
    }
}
