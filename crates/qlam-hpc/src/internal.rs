//! `qlam-hpc __internal STEP …`: steps qlam-hpc runs as child processes of itself — the
//! hooks' user side (run after dropping to the job's user), the long-job renewer, and
//! doctor's lock probes. They are not part of the documented command line, so they appear in
//! no help, completion or man page.

use std::path::Path;

use qlam_auth::doctor;
use qlam_auth::env_vars::EnvVars;
use qlam_auth::{Ctx, Error, ErrorKind};

use crate::cli::HookArgs;
use crate::hook;
use crate::output::Printer;

fn parse_step_args(args: &[String]) -> Result<HookArgs, Error> {
    let mut out = HookArgs::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| Error::new(ErrorKind::Usage, format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--job" => out.job = Some(value()?),
            "--node" => out.node = Some(value()?),
            "--end" => {
                let v = value()?;
                out.end = Some(v.parse().map_err(|_| {
                    Error::new(ErrorKind::Usage, format!("--end {v:?} is not a number"))
                })?);
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Usage,
                    format!("unknown internal argument {other:?}"),
                ));
            }
        }
    }
    Ok(out)
}

fn step(args: &[String], ctx: Ctx, printer: &Printer) -> Result<i32, Error> {
    let Some(name) = args.first() else {
        return Err(Error::new(ErrorKind::Usage, "internal step missing"));
    };
    let rest = &args[1..];
    match name.as_str() {
        "stage-as-user" => hook::stage_as_user(ctx, &parse_step_args(rest)?, printer),
        "renew-as-user" => hook::renew_as_user(ctx, &parse_step_args(rest)?),
        "unstage-as-user" => hook::unstage_as_user(ctx, &parse_step_args(rest)?, printer),
        "lock-probe" => {
            let path = rest
                .first()
                .ok_or_else(|| Error::new(ErrorKind::Usage, "lock-probe PATH"))?;
            printer.result(&format!("{}\n", doctor::lock_probe_peer(Path::new(path))));
            Ok(0)
        }
        "node-lock-test" => {
            let path = rest
                .first()
                .ok_or_else(|| Error::new(ErrorKind::Usage, "node-lock-test PATH"))?;
            let procid = ctx
                .var(EnvVars::SLURM_PROCID)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match doctor::node_lock_test(Path::new(path), procid) {
                Ok(line) => {
                    if !line.is_empty() {
                        printer.result(&format!("{line}\n"));
                    }
                    Ok(if line.starts_with("NOT") { 1 } else { 0 })
                }
                Err(e) => {
                    printer.result(&format!("error: {e}\n"));
                    Ok(1)
                }
            }
        }
        other => Err(Error::new(
            ErrorKind::Usage,
            format!("unknown internal step {other:?}"),
        )),
    }
}

/// Run an internal step; returns the exit code.
pub(crate) fn run(args: &[String], ctx: Ctx, printer: &Printer) -> i32 {
    match step(args, ctx, printer) {
        Ok(code) => code,
        Err(e) => {
            printer.error(&e);
            e.exit_code()
        }
    }
}
