//! `doctor` and `check`: the commands users and admins reach for when something is off, and
//! the submit-time check that a login outlives the job.

use std::path::PathBuf;
use std::time::Duration;

use qlam_auth::config::Overrides;
use qlam_auth::doctor::{self, DoctorOptions, Level};
use qlam_auth::env_vars::EnvVars;
use qlam_auth::session::Session;
use qlam_auth::store::format::iso_unix;
use qlam_auth::{Ctx, Error, ErrorKind};

use crate::cli::Cli;
use crate::output::Printer;

pub(crate) struct DoctorArgs {
    pub(crate) nodes: bool,
    pub(crate) peer_path: Option<PathBuf>,
    pub(crate) offline: bool,
}

fn exe() -> Result<PathBuf, Error> {
    std::env::current_exe()
        .map_err(|e| Error::internal(format!("cannot find the qlam-hpc binary: {e}")))
}

/// `doctor`.
pub(crate) fn doctor(
    cli: &Cli,
    ctx: Ctx,
    args: &DoctorArgs,
    printer: &Printer,
) -> Result<i32, Error> {
    let overrides = Overrides {
        context: cli.context.clone(),
        provider: cli.provider.clone(),
    };
    let opts = DoctorOptions {
        exe: exe()?,
        peer_path: args.peer_path.clone(),
        offline: args.offline,
    };
    let report = doctor::run(&ctx, &overrides, &opts);
    let mut failed = report.failed();
    let mut nodes_line = None;
    if args.nodes {
        let (ok, line) = nodes_test(cli, &ctx)?;
        failed |= !ok;
        nodes_line = Some(line);
    }
    if printer.json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        if let Some(l) = &nodes_line {
            v["nodes"] = serde_json::Value::String(l.clone());
        }
        printer.json_line(&v);
    } else {
        let mut out = String::new();
        for c in &report.checks {
            let tag = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
                Level::Skip => "skip",
            };
            out.push_str(&format!("[{tag}] {:<15}{}\n", c.name, c.detail));
            if let Some(a) = &c.advice {
                out.push_str(&format!("       {:<15}→ {a}\n", ""));
            }
        }
        out.push_str(&format!(
            "\nlock = \"auto\" uses: {} ({})\n",
            report.auto_lock_method, report.auto_lock_reason
        ));
        if let Some(l) = nodes_line {
            out.push_str(&format!("across nodes: {l}\n"));
        }
        printer.result(&out);
    }
    Ok(if failed { 1 } else { 0 })
}

/// `doctor --nodes`: run the cross-node lock test on two nodes of the current allocation.
fn nodes_test(cli: &Cli, ctx: &Ctx) -> Result<(bool, String), Error> {
    let nodes: u32 = ctx
        .var(EnvVars::SLURM_JOB_NUM_NODES)
        .or(ctx.var(EnvVars::SLURM_NNODES))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if ctx.var(EnvVars::SLURM_JOB_ID).is_none() || nodes < 2 {
        return Err(Error::new(
            ErrorKind::Usage,
            "`doctor --nodes` must run inside a Slurm allocation of 2 or more nodes",
        )
        .with_hint("e.g. salloc -N2 qlam-hpc doctor --nodes"));
    }
    let overrides = Overrides {
        context: cli.context.clone(),
        provider: cli.provider.clone(),
    };
    let settings = qlam_auth::config::load(ctx, &overrides)?;
    let session = Session::new(ctx.clone(), settings);
    session.store.ensure_dir()?;
    let out = std::process::Command::new("srun")
        .args(["-N2", "-n2", "--ntasks-per-node=1", "--kill-on-bad-exit=0"])
        .arg(exe()?)
        .args([qlam_auth::hooks::INTERNAL_CMD, "node-lock-test"])
        .arg(&session.store.lock_file)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::internal(format!("cannot run srun: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ok = out.status.success() && text.starts_with("coherent");
    Ok((
        ok,
        if text.is_empty() {
            format!(
                "srun failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        } else {
            text
        },
    ))
}

/// Slurm's `--time` forms (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) or a duration.
pub(crate) fn parse_walltime(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.chars()
        .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
        && !s.is_empty()
    {
        let (days, rest) = match s.split_once('-') {
            Some((d, r)) => (
                d.parse::<u64>().map_err(|_| format!("bad days in {s:?}"))?,
                Some(r),
            ),
            None => (0, None),
        };
        let nums = |t: &str| {
            t.split(':')
                .map(|x| x.parse::<u64>().map_err(|_| format!("bad walltime {s:?}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let secs = match rest {
            // D-HH, D-HH:MM, D-HH:MM:SS
            Some(r) => match nums(r)?.as_slice() {
                [h] => h * 3600,
                [h, m] => h * 3600 + m * 60,
                [h, m, sec] => h * 3600 + m * 60 + sec,
                _ => return Err(format!("bad walltime {s:?}")),
            },
            // MM, MM:SS, HH:MM:SS
            None => match nums(s)?.as_slice() {
                [m] => m * 60,
                [m, sec] => m * 60 + sec,
                [h, m, sec] => h * 3600 + m * 60 + sec,
                _ => return Err(format!("bad walltime {s:?}")),
            },
        };
        return Ok(Duration::from_secs(days * 86_400 + secs));
    }
    qlam_auth::duration::parse_duration(s)
}

/// `check --time W [--begin D]`.
pub(crate) fn check(
    session: &Session,
    time: &str,
    begin: Option<&str>,
    printer: &Printer,
) -> Result<i32, Error> {
    let usage = |m: String| Error::new(ErrorKind::Usage, m);
    let unlimited = matches!(
        time.trim().to_ascii_uppercase().as_str(),
        "UNLIMITED" | "INFINITE"
    );
    let walltime = if unlimited {
        Duration::MAX
    } else {
        parse_walltime(time).map_err(|e| usage(format!("--time: {e}")))?
    };
    let begin = match begin {
        Some(b) => {
            qlam_auth::duration::parse_duration(b).map_err(|e| usage(format!("--begin: {e}")))?
        }
        None => Duration::ZERO,
    };
    if session.settings.provider.is_m2m() {
        printer.info("ok: this provider mints M2M tokens on demand; there is no login to expire");
        return Ok(0);
    }
    if unlimited {
        return Err(
            Error::auth("a job without a time limit can outlive any login")
                .with_hint("give the job a --time, or use an M2M provider for it"),
        );
    }
    let status = session.status()?;
    if !status.logged_in {
        return Err(
            Error::auth("not logged in").with_hint("run `qlam-hpc login` before submitting")
        );
    }
    if !status.usable {
        return Err(Error::auth("the login has expired or was revoked")
            .with_hint("run `qlam-hpc login` again before submitting"));
    }
    let now = session.ctx.now_unix();
    let job_end = now + begin.as_secs_f64() + walltime.as_secs_f64();
    let lifetime = session
        .settings
        .provider
        .refresh_token_lifetime
        .as_secs_f64();
    let Some(login_end) = status
        .login_at
        .as_deref()
        .and_then(qlam_auth::store::format::parse_time)
        .map(|t| t.timestamp() as f64 + lifetime)
    else {
        printer.warn("the login time is unknown (the login was not made by qlam-hpc), so the check cannot tell when it ends");
        return Ok(0);
    };
    // Leave room for queueing jitter and the refresh before the end.
    let margin = 600.0;
    if job_end + margin > login_end {
        return Err(Error::auth(format!(
            "the login expires around {} (estimated: login + {}), before this job can finish (as late as {})",
            iso_unix(login_end),
            qlam_auth::duration::human(Duration::from_secs_f64(lifetime)),
            iso_unix(job_end)
        ))
        .with_hint(if job_end + margin > now + lifetime {
            format!(
                "even a new login (about {}) cannot outlast this job: shorten its time limit or start it sooner",
                qlam_auth::duration::human(Duration::from_secs_f64(lifetime))
            )
        } else {
            format!("run `qlam-hpc login` now: a new login lasts until about {}", iso_unix(now + lifetime))
        }));
    }
    printer.info(&format!(
        "ok: the login lasts until about {}; the job ends by {} at the latest",
        iso_unix(login_end),
        iso_unix(job_end)
    ));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_walltime;

    #[test]
    fn slurm_time_forms() {
        let s = |x: &str| parse_walltime(x).unwrap().as_secs();
        assert_eq!(s("30"), 1800);
        assert_eq!(s("30:15"), 1815);
        assert_eq!(s("2:00:00"), 7200);
        assert_eq!(s("1-0"), 86_400);
        assert_eq!(s("1-2:30"), 86_400 + 9000);
        assert_eq!(s("1-2:30:05"), 86_400 + 9005);
        assert_eq!(s("2h"), 7200);
        assert!(parse_walltime("soon").is_err());
        assert!(parse_walltime("1:2:3:4").is_err());
    }
}
