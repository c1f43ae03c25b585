//! The `qlam-hpc` binary: parses the command line, builds the process context, calls
//! qlam-auth, renders the result and maps errors to DESIGN §8's exit codes. All logic lives
//! in the library; this crate stays thin.
//!
//! `main` is the C entry point (`no_main`): std's start-up routine would otherwise read
//! `/proc/self/maps` to set up a stack guard on every run, a large share of the cost of a
//! cached `qlam-hpc token`. Arguments and environment still come from std (glibc hands them
//! over through `.init_array`); a stack overflow then ends with SIGSEGV instead of a message.

#![cfg_attr(not(test), no_main)]

mod cli;
mod commands;
mod demo;
mod diagnose;
mod exec;
mod hook;
mod internal;
mod login;
mod output;

use clap::Parser;
use qlam_auth::config::{self, Overrides};
use qlam_auth::session::Session;
use qlam_auth::{Ctx, Error, ErrorKind};

use crate::cli::{Cli, Command, Output};
use crate::output::Printer;

#[cfg(not(test))]
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    real_main();
    0
}

#[cfg_attr(test, allow(dead_code))]
fn real_main() {
    // The hooks' and doctor's internal steps are not part of the command line users see.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(qlam_auth::hooks::INTERNAL_CMD) {
        let printer = Printer {
            verbose: 0,
            quiet: false,
            json: false,
        };
        std::process::exit(internal::run(&argv[2..], Ctx::from_process(), &printer));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let printer = Printer {
        verbose: cli.verbose,
        quiet: cli.quiet,
        json: cli.output == Output::Json,
    };
    let ctx = Ctx::from_process();
    let code = match run(cli, ctx, &printer) {
        Ok(code) => code,
        Err(e) => {
            printer.error(&e);
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// Load the configuration and open the session.
pub(crate) fn session(cli: &Cli, ctx: Ctx) -> Result<Session, Error> {
    let overrides = Overrides {
        context: cli.context.clone(),
        provider: cli.provider.clone(),
    };
    let settings = config::load(&ctx, &overrides)?;
    Ok(Session::new(ctx, settings))
}

/// Parse a `--min-ttl` value (usage error, exit 2, when malformed).
pub(crate) fn parse_min_ttl(
    flag: Option<&str>,
    session: &Session,
) -> Result<std::time::Duration, Error> {
    match flag {
        Some("job") => {
            // The rest of the batch job, at least 5 minutes; 1 hour when the scheduler
            // does not say.
            let left = qlam_auth::hooks::slurm::job_remaining(&session.ctx).unwrap_or(3600.0);
            Ok(std::time::Duration::from_secs_f64(left.max(300.0)))
        }
        Some(s) => qlam_auth::duration::parse_duration(s)
            .map_err(|e| Error::new(ErrorKind::Usage, format!("--min-ttl: {e}"))),
        None => Ok(session
            .settings
            .min_ttl
            .unwrap_or(qlam_auth::session::DEFAULT_MIN_TTL)),
    }
}

fn run(cli: Cli, ctx: Ctx, printer: &Printer) -> Result<i32, Error> {
    match &cli.command {
        Command::Demo { tasks, dir } => demo::run(*tasks, dir.clone(), printer),
        Command::Token { min_ttl } => {
            commands::token(&session(&cli, ctx)?, min_ttl.as_deref(), printer)
        }
        Command::Env { min_ttl, shell } => {
            commands::env(&session(&cli, ctx)?, min_ttl.as_deref(), *shell, printer)
        }
        Command::Status => commands::status(&session(&cli, ctx)?, printer),
        Command::Refresh { force, min_ttl } => {
            commands::refresh(&session(&cli, ctx)?, *force, min_ttl.as_deref(), printer)
        }
        Command::Logout { revoke } => commands::logout(&session(&cli, ctx)?, *revoke, printer),
        Command::Login {
            device,
            browser,
            no_qr,
            no_browser,
        } => {
            let opts = login::LoginOptions {
                device: *device,
                browser: *browser,
                no_qr: *no_qr,
                no_browser: *no_browser,
            };
            login::run(&session(&cli, ctx)?, &opts, printer)
        }
        Command::Doctor {
            nodes,
            peer_path,
            offline,
        } => {
            let opts = diagnose::DoctorArgs {
                nodes: *nodes,
                peer_path: peer_path.clone(),
                offline: *offline,
            };
            diagnose::doctor(&cli, ctx, &opts, printer)
        }
        Command::Check { time, begin } => {
            diagnose::check(&session(&cli, ctx)?, time, begin.as_deref(), printer)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "qlam-hpc", &mut out);
            printer.result(&String::from_utf8_lossy(&out));
            Ok(0)
        }
        Command::Man => {
            printer.result(&man_page()?);
            Ok(0)
        }
        Command::Hook { name, args } => hook::run(*name, args, ctx, printer),
        Command::Exec { min_ttl, command } => {
            exec::run(&session(&cli, ctx)?, min_ttl.as_deref(), command, printer)
        }
    }
}

/// The man page: the main page, then each command's usage and options, so that one page
/// documents every flag.
fn man_page() -> Result<String, Error> {
    let err = |e: std::io::Error| Error::internal(format!("rendering the man page: {e}"));
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .map_err(err)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = sub.get_name();
        out.extend_from_slice(format!(".SH \"QLAM\\-HPC {}\"\n", name.to_uppercase()).as_bytes());
        let mut section = Vec::new();
        let page = clap_mangen::Man::new(sub.clone().bin_name(format!("qlam-hpc {name}")));
        page.render_synopsis_section(&mut section).map_err(err)?;
        page.render_description_section(&mut section).map_err(err)?;
        page.render_options_section(&mut section).map_err(err)?;
        // Nest the command's sections under its heading.
        let text = String::from_utf8_lossy(&section)
            .replace(".SH SYNOPSIS", ".SS Synopsis")
            .replace(".SH DESCRIPTION", ".SS Description")
            .replace(".SH OPTIONS", ".SS Options");
        out.extend_from_slice(text.as_bytes());
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
