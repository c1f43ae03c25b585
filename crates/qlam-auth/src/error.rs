//! The library's error: a kind that maps to DESIGN §8's exit codes, a message that says what
//! happened, an optional hint that says what to do next, and the underlying cause.
//! Messages never contain tokens, secrets or keys.

use std::fmt;

/// What went wrong, at the granularity of the exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command-line usage (exit 2).
    Usage,
    /// IdP unreachable, DNS, TLS, timeout (exit 11).
    Network,
    /// Broken or unknown configuration (exit 40).
    Config,
    /// Login required, refresh token rejected, access denied, device code expired (exit 41).
    Auth,
    /// The IdP kept failing with server errors after retries (exit 50).
    IdpServer,
    /// Store corrupt, insecure permissions, unwritable (exit 60).
    Store,
    /// The store lock could not be taken in time (exit 61).
    LockTimeout,
    /// The M2M monthly budget is exhausted (exit 62).
    Budget,
    /// A bug or an unexpected condition (exit 99).
    Internal,
    /// Interrupted by a signal (exit 130).
    Interrupted,
}

impl ErrorKind {
    /// The process exit code of DESIGN §8.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::Network => 11,
            ErrorKind::Config => 40,
            ErrorKind::Auth => 41,
            ErrorKind::IdpServer => 50,
            ErrorKind::Store => 60,
            ErrorKind::LockTimeout => 61,
            ErrorKind::Budget => 62,
            ErrorKind::Internal => 99,
            ErrorKind::Interrupted => 130,
        }
    }
}

/// An error with a kind, a message, an optional hint and an optional source.
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    /// Attach what the user should do next.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Attach the underlying cause (shown at `-v`).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Shorthand constructors, one per kind.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// See [`ErrorKind::Auth`].
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Auth, message)
    }
    /// See [`ErrorKind::Store`].
    pub fn store(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Store, message)
    }
    /// See [`ErrorKind::Network`].
    pub fn network(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Network, message)
    }
    /// See [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The kind, which decides the exit code.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// What happened.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// What to do next, if known.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("hint", &self.hint)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}
