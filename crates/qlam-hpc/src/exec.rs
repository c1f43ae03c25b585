//! `exec -- CMD`: run CMD with the token in `QLAM_ACCESS_TOKEN` and in a 0600 file named by
//! `QLAM_ACCESS_TOKEN_FILE`, rewrite that file before the token expires for as long as CMD
//! runs, forward signals to it, and exit with its status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, Signal};
use qlam_auth::env_vars::EnvVars;
use qlam_auth::session::Session;
use qlam_auth::store::StoreFile;
use qlam_auth::store::single_flight::effective_min_ttl;
use qlam_auth::{Error, ErrorKind};

use crate::output::Printer;

/// Pending signals as a bit set (bit n = signal n), written by the handler.
static PENDING: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    PENDING.fetch_or(1u64 << (sig as u64 & 63), Ordering::SeqCst);
}

const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

#[allow(unsafe_code)]
fn install_handlers() {
    let action = signal::SigAction::new(
        SigHandler::Handler(on_signal),
        signal::SaFlags::SA_RESTART,
        signal::SigSet::empty(),
    );
    for s in FORWARDED {
        // SAFETY: the handler only performs an atomic fetch_or, which is async-signal-safe.
        unsafe {
            let _ = signal::sigaction(s, &action);
        }
    }
}

fn write_token_file(path: &std::path::Path, token: &str) -> Result<(), Error> {
    qlam_auth::store::fsutil::write_atomic(path, format!("{token}\n").as_bytes(), 0o600, false)
}

fn token_of(file: &StoreFile) -> Result<(String, f64), Error> {
    let t = file
        .token()
        .ok_or_else(|| Error::new(ErrorKind::Store, "the credentials file holds no token"))?;
    Ok((
        t.access_token.expose().to_string(),
        file.expires_at_unix().unwrap_or(f64::MAX),
    ))
}

/// Run the command.
pub(crate) fn run(
    session: &Session,
    min_ttl: Option<&str>,
    command: &[String],
    printer: &Printer,
) -> Result<i32, Error> {
    let min_ttl = crate::parse_min_ttl(min_ttl, session)?;
    let ensured = session.ensure(min_ttl, false)?;
    if let Some(w) = &ensured.warning {
        printer.warn(w);
    }
    let (token, mut expires) = token_of(&ensured.file)?;
    let mut renew_margin = effective_min_ttl(&ensured.file, min_ttl);

    let dir = session
        .ctx
        .runtime_dir()
        .join(format!("exec-{}", session.ctx.pid));
    qlam_auth::store::fsutil::create_private_dir(&dir)?;
    let token_file = dir.join("access_token");
    write_token_file(&token_file, &token)?;

    install_handlers();
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env(EnvVars::QLAM_ACCESS_TOKEN, &token)
        .env(
            EnvVars::QLAM_TOKEN_EXPIRES_AT,
            (expires.floor() as i64).to_string(),
        )
        .env(EnvVars::QLAM_ACCESS_TOKEN_FILE, &token_file);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            printer.error(&Error::new(
                ErrorKind::Usage,
                format!("cannot run {:?}: {e}", command[0]),
            ));
            return Ok(code);
        }
    };
    let child_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut next_attempt = Instant::now();
    let status = loop {
        let pending = PENDING.swap(0, Ordering::SeqCst);
        for s in FORWARDED {
            if pending & (1u64 << (s as i32 as u64)) != 0 {
                let _ = signal::kill(child_pid, s);
            }
        }
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::internal(format!("waiting for the command: {e}")));
            }
        }
        let now = session.ctx.now_unix();
        if now >= expires - renew_margin && Instant::now() >= next_attempt {
            match session.ensure(min_ttl, false) {
                Ok(e) => {
                    if let Ok((tok, exp)) = token_of(&e.file) {
                        if write_token_file(&token_file, &tok).is_ok() {
                            printer.debug(1, "renewed the token file");
                        }
                        expires = exp;
                        renew_margin = effective_min_ttl(&e.file, min_ttl);
                    }
                    if let Some(w) = e.warning {
                        printer.warn(&w);
                        next_attempt = Instant::now() + Duration::from_secs(30);
                    }
                }
                Err(e) => {
                    printer.warn(&format!(
                        "could not renew the token for the running command: {}",
                        e.message()
                    ));
                    next_attempt = Instant::now() + Duration::from_secs(30);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_dir_all(&dir);
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
