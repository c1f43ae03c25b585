//! The small commands: `token`, `env`, `status`, `refresh`, `logout`.

use qlam_auth::session::Session;
use qlam_auth::store::single_flight::{Ensured, Source};
use qlam_auth::{Error, ErrorKind};

use crate::cli::Shell;
use crate::output::Printer;
use crate::parse_min_ttl;

fn report(ensured: &Ensured, printer: &Printer) {
    match ensured.source {
        Source::Cache => printer.debug(1, "token from the store (no refresh needed)"),
        Source::Renewed => printer.debug(1, "refreshed the token at the IdP"),
        Source::RenewedByOther => {
            printer.debug(1, "another process refreshed the token meanwhile; using it")
        }
        Source::Stale => {}
    }
    if let Some(w) = &ensured.warning {
        printer.warn(w);
    }
}

fn access_token(ensured: &Ensured) -> Result<(String, i64), Error> {
    let token = ensured
        .file
        .token()
        .ok_or_else(|| Error::new(ErrorKind::Store, "the credentials file holds no token"))?;
    let expires = ensured
        .file
        .expires_at_unix()
        .map_or(0, |e| e.floor() as i64);
    Ok((token.access_token.expose().to_string(), expires))
}

/// `token`: the access token and a newline, nothing else.
pub(crate) fn token(
    session: &Session,
    min_ttl: Option<&str>,
    printer: &Printer,
) -> Result<i32, Error> {
    let min_ttl = parse_min_ttl(min_ttl, session)?;
    let ensured = session.ensure(min_ttl, false)?;
    report(&ensured, printer);
    let (tok, expires) = access_token(&ensured)?;
    if printer.json {
        printer.json_line(&serde_json::json!({ "access_token": tok, "expires_at": expires }));
    } else {
        printer.result(&format!("{tok}\n"));
    }
    Ok(0)
}

/// Quote for POSIX sh, csh and fish: single quotes, with embedded quotes escaped.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `env`: shell lines exporting the token and its expiry.
pub(crate) fn env(
    session: &Session,
    min_ttl: Option<&str>,
    shell: Shell,
    printer: &Printer,
) -> Result<i32, Error> {
    let min_ttl = parse_min_ttl(min_ttl, session)?;
    let ensured = session.ensure(min_ttl, false)?;
    report(&ensured, printer);
    let (tok, expires) = access_token(&ensured)?;
    let vars = [
        ("QLAM_ACCESS_TOKEN", quote(&tok)),
        ("QLAM_TOKEN_EXPIRES_AT", expires.to_string()),
    ];
    let mut out = String::new();
    for (k, v) in vars {
        out.push_str(&match shell {
            Shell::Sh => format!("export {k}={v};\n"),
            Shell::Csh => format!("setenv {k} {v};\n"),
            Shell::Fish => format!("set -gx {k} {v};\n"),
        });
    }
    printer.result(&out);
    Ok(0)
}

/// `refresh`: refresh now if due, or always with `--force`.
pub(crate) fn refresh(
    session: &Session,
    force: bool,
    min_ttl: Option<&str>,
    printer: &Printer,
) -> Result<i32, Error> {
    let min_ttl = parse_min_ttl(min_ttl, session)?;
    let ensured = session.ensure(min_ttl, force)?;
    report(&ensured, printer);
    let expires = ensured.file.expires_at_unix().unwrap_or(0.0);
    let left = expires - session.ctx.now_unix();
    let what = match ensured.source {
        Source::Cache => "not due",
        Source::Renewed => "refreshed",
        Source::RenewedByOther => "refreshed by another process",
        Source::Stale => "refresh failed; the current token is still valid",
    };
    if printer.json {
        printer.json_line(&serde_json::json!({
            "result": what, "expires_at": expires.floor() as i64, "generation": ensured.file.generation()
        }));
    } else {
        printer.info(&format!(
            "{what}: the access token is valid for {}",
            qlam_auth::duration::human(std::time::Duration::from_secs_f64(left.max(0.0)))
        ));
    }
    // A refresh that failed is a failure, even while the old token still works.
    Ok(ensured.failure.map_or(0, |k| k.exit_code()))
}

/// `logout`: remove the local credentials.
pub(crate) fn logout(session: &Session, revoke: bool, printer: &Printer) -> Result<i32, Error> {
    let revoked = if revoke { session.revoke()? } else { false };
    if revoked {
        printer.info("revoked the refresh token at the IdP");
    }
    let removed = session.logout()?;
    if printer.json {
        printer.json_line(&serde_json::json!({ "removed": removed, "revoked": revoked, "store_path": session.store.file.display().to_string() }));
    } else if removed {
        printer.info(&format!(
            "logged out: removed {}",
            session.store.file.display()
        ));
    } else {
        printer.info("not logged in: nothing to remove");
    }
    Ok(0)
}

/// `status`: exit 0 when a token is valid or can be refreshed, 41 when a login is needed.
pub(crate) fn status(session: &Session, printer: &Printer) -> Result<i32, Error> {
    let s = session.status()?;
    if printer.json {
        printer.json_line(&serde_json::to_value(&s).unwrap_or_default());
    } else {
        let now = session.ctx.now_unix();
        let mut out = String::new();
        let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<22}{v}\n"));
        line(&mut out, "context", s.context.clone());
        line(
            &mut out,
            "provider",
            format!(
                "{}{}",
                s.provider,
                s.grant_type
                    .as_ref()
                    .map(|g| format!(" ({g})"))
                    .unwrap_or_default()
            ),
        );
        if !s.logged_in {
            line(&mut out, "login", "not logged in".into());
        } else {
            let who = s
                .email
                .clone()
                .or(s.name.clone())
                .or(s.subject.clone())
                .unwrap_or_else(|| "unknown".into());
            line(&mut out, "user", who);
            if let Some(e) = s.access_token_expires_at {
                let left = e - now;
                let rel = if left >= 0.0 {
                    format!(
                        "valid for {}",
                        qlam_auth::duration::human(std::time::Duration::from_secs_f64(left))
                    )
                } else {
                    format!(
                        "expired {} ago",
                        qlam_auth::duration::human(std::time::Duration::from_secs_f64(-left))
                    )
                };
                line(
                    &mut out,
                    "access token",
                    format!("{rel} (until {})", qlam_auth::store::format::iso_unix(e)),
                );
            }
            if let (Some(at), Some(age)) = (&s.login_at, s.login_age_seconds) {
                line(
                    &mut out,
                    "logged in",
                    format!(
                        "{at} ({} ago)",
                        qlam_auth::duration::human(std::time::Duration::from_secs(
                            age.max(0) as u64
                        ))
                    ),
                );
            }
            if let Some(rt) = &s.refresh_token_expires_at_estimate {
                line(&mut out, "login expires (est.)", rt.clone());
            }
            line(
                &mut out,
                "refresh token",
                if s.has_refresh_token {
                    "present".into()
                } else {
                    "none".into()
                },
            );
            if let Some(at) = &s.last_refresh_at {
                let by = match (&s.last_refresh_host, s.last_refresh_pid) {
                    (Some(h), Some(p)) => format!(
                        " by {h} pid {p}{}",
                        s.last_refresh_job
                            .as_ref()
                            .map(|j| format!(" job {j}"))
                            .unwrap_or_default()
                    ),
                    _ => String::new(),
                };
                line(&mut out, "last refresh", format!("{at}{by}"));
            }
            if let Some(e) = &s.last_error {
                line(&mut out, "last error", e.clone());
            }
        }
        line(&mut out, "store", s.store_path.clone());
        line(&mut out, "lock method", s.lock_method.clone());
        match (s.m2m_monthly_budget, s.m2m_mints_this_month) {
            (Some(b), mints) => line(
                &mut out,
                "m2m budget",
                format!("{} of {b} this month", mints.unwrap_or(0)),
            ),
            (None, Some(mints)) => line(
                &mut out,
                "m2m mints",
                format!("{mints} this month (no budget set)"),
            ),
            (None, None) => {}
        }
        printer.result(&out);
        if !s.usable {
            printer.info("a login is needed: run `qlam-hpc login` on a login node");
        }
    }
    Ok(if s.usable { 0 } else { 41 })
}
