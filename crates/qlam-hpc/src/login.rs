//! `login`: the device flow with a QR code and a countdown (DESIGN §4). JSON events on
//! stdout with `-o json`; everything for people goes to stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use qlam_auth::Error;
use qlam_auth::config::GrantType;
use qlam_auth::env_vars::EnvVars;
use qlam_auth::flows::device::{DeviceAuthorization, PollObserver};
use qlam_auth::session::{LoginObserver, Session};

use crate::output::Printer;

pub(crate) struct LoginOptions {
    pub(crate) device: bool,
    pub(crate) browser: bool,
    pub(crate) no_qr: bool,
    pub(crate) no_browser: bool,
}

struct Observer<'a> {
    printer: &'a Printer,
    no_qr: bool,
    tty: bool,
    spin: usize,
}

fn qr(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

impl PollObserver for Observer<'_> {
    fn waiting(&mut self, remaining: Duration) {
        if self.tty && !self.printer.quiet {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            self.spin = (self.spin + 1) % FRAMES.len();
            let mut e = std::io::stderr().lock();
            let _ = write!(
                e,
                "\r{} waiting for approval… the code expires in {}   ",
                FRAMES[self.spin],
                qlam_auth::duration::human(Duration::from_secs(remaining.as_secs()))
            );
            let _ = e.flush();
        }
    }

    fn transient(&mut self, message: &str) {
        if self.tty {
            self.printer.info("");
        }
        self.printer.warn(&format!("{message}; still polling"));
    }
}

impl LoginObserver for Observer<'_> {
    fn device_authorization(&mut self, auth: &DeviceAuthorization) {
        if self.printer.json {
            self.printer.json_line(&serde_json::json!({
                "event": "device_authorization",
                "verification_uri": auth.verification_uri,
                "verification_uri_complete": auth.verification_uri_complete,
                "user_code": auth.user_code,
                "expires_in": auth.expires_in,
            }));
        }
        let mut text = String::new();
        text.push_str(&format!(
            "To log in, open {}\nand enter the code: {}\n",
            auth.verification_uri, auth.user_code
        ));
        if let Some(complete) = &auth.verification_uri_complete {
            text.push_str(&format!("(or open {complete} directly)\n"));
            if !self.no_qr
                && !self.printer.json
                && let Some(q) = qr(complete)
            {
                text.push_str("\nOr scan this QR code with a phone:\n");
                text.push_str(&q);
                text.push('\n');
            }
        }
        self.printer.notice(&text);
    }
}

/// Run the login.
pub(crate) fn run(session: &Session, opts: &LoginOptions, printer: &Printer) -> Result<i32, Error> {
    if session.in_batch_job() && !std::io::stdin().is_terminal() {
        return Err(
            Error::auth("refusing to start an interactive login inside a batch job").with_hint(
                "run `qlam-hpc login` once on a login node; jobs then use the stored login",
            ),
        );
    }
    let display = session.ctx.var(EnvVars::DISPLAY).is_some()
        || session.ctx.var(EnvVars::WAYLAND_DISPLAY).is_some();
    let grant = if opts.device {
        GrantType::DeviceCode
    } else if opts.browser {
        GrantType::AuthorizationCode
    } else {
        match session.settings.provider.grant_type {
            Some(g) => g,
            None if display => GrantType::AuthorizationCode,
            None => GrantType::DeviceCode,
        }
    };
    match grant {
        GrantType::DeviceCode => {}
        GrantType::AuthorizationCode => return browser_login(session, opts, printer),
        GrantType::ClientCredentials => {
            return Err(Error::config(
                "this provider uses client credentials: there is nothing to log in to",
            )
            .with_hint("run `qlam-hpc token`; it mints a token when needed"));
        }
        GrantType::TokenExchange => {
            return Err(Error::config(
                "token_exchange providers cannot log in with qlam-hpc",
            ));
        }
    }
    let mut observer = Observer {
        printer,
        no_qr: opts.no_qr,
        tty: std::io::stderr().is_terminal(),
        spin: 0,
    };
    let file = session.login_device(&mut observer)?;
    if observer.tty {
        printer.info("");
    }
    logged_in(session, &file, printer)
}

/// How long the browser login waits for the redirect.
const BROWSER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Open `url` with `$BROWSER`, `xdg-open` or `open`; false when none could start.
fn open_browser(session: &Session, url: &str) -> bool {
    let mut candidates: Vec<String> = Vec::new();
    if let Some(b) = session.ctx.var(EnvVars::BROWSER) {
        candidates.extend(b.split(':').map(str::to_string));
    }
    candidates.push("xdg-open".into());
    candidates.push("open".into());
    candidates.into_iter().any(|c| {
        std::process::Command::new(&c)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_ok()
    })
}

fn browser_login(session: &Session, opts: &LoginOptions, printer: &Printer) -> Result<i32, Error> {
    let port = session.settings.provider.redirect_port;
    let mut show = |url: &str| {
        if printer.json {
            printer.json_line(&serde_json::json!({ "event": "authorization_request", "url": url }));
        }
        let opened = !opts.no_browser && open_browser(session, url);
        let mut text = if opened {
            format!("Opened your browser to log in. If nothing appears, open:\n{url}\n")
        } else {
            format!("To log in, open this URL in a browser on this machine:\n{url}\n")
        };
        if session.ctx.var(EnvVars::SSH_CONNECTION).is_some() || !opened {
            text.push_str(&format!(
                "\nOver SSH, forward the redirect port first (ssh -L {port}:localhost:{port} <this host>), \
                 or use `qlam-hpc login --device`.\n"
            ));
        }
        text.push_str("Waiting for the login to finish...");
        printer.notice(&text);
    };
    let file = session.login_browser(&mut show, BROWSER_TIMEOUT)?;
    logged_in(session, &file, printer)
}

fn logged_in(
    session: &Session,
    file: &qlam_auth::store::StoreFile,
    printer: &Printer,
) -> Result<i32, Error> {
    let expires = file.expires_at_unix().map_or(0, |e| e.floor() as i64);
    if printer.json {
        printer.json_line(&serde_json::json!({ "event": "logged_in", "expires_at": expires }));
    }
    let who = file
        .token()
        .and_then(|t| t.id_token.as_ref())
        .and_then(|i| qlam_auth::jwt::identity(i.expose()))
        .and_then(|i| i.email.or(i.name).or(i.subject));
    printer.info(&format!(
        "logged in{}; credentials stored in {}",
        who.map(|w| format!(" as {w}")).unwrap_or_default(),
        session.store.file.display()
    ));
    Ok(0)
}
