//! Everything the binary writes goes through here: results to stdout, progress and errors
//! to stderr, honouring -q/-v. Errors print what happened, what to do next, and at -v the
//! whole chain of causes.

use std::io::Write;

use qlam_auth::Error;

/// Where output goes.
pub(crate) struct Printer {
    pub(crate) verbose: u8,
    pub(crate) quiet: bool,
    pub(crate) json: bool,
}

impl Printer {
    /// Write the command's result to stdout.
    pub(crate) fn result(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Write one JSON value as a line to stdout.
    pub(crate) fn json_line(&self, value: &serde_json::Value) {
        self.result(&format!("{value}\n"));
    }

    /// Progress or information for people (stderr; silenced by -q).
    pub(crate) fn info(&self, text: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }

    /// What a person must see to go on (a login URL and code): stderr, even with -q.
    pub(crate) fn notice(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    /// A warning (stderr; silenced by -q).
    pub(crate) fn warn(&self, text: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "qlam-hpc: warning: {text}");
        }
    }

    /// Detail shown at -v (level 1) or -vv (level 2).
    pub(crate) fn debug(&self, level: u8, text: &str) {
        if self.verbose >= level {
            let _ = writeln!(std::io::stderr().lock(), "qlam-hpc: {text}");
        }
    }

    /// Render an error: message, hint, and at -v its causes.
    pub(crate) fn error(&self, err: &Error) {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "qlam-hpc: error: {}", err.message());
        if self.verbose > 0 {
            let mut src = std::error::Error::source(err);
            while let Some(s) = src {
                let _ = writeln!(e, "  caused by: {s}");
                src = s.source();
            }
        }
        if let Some(h) = err.hint() {
            let _ = writeln!(e, "  hint: {h}");
        }
    }
}
