//! qlam-auth: everything qlam-hpc does with QLAM OAuth2 tokens, as a library.
//!
//! Configuration ([`config`]), discovery ([`discovery`]), the OAuth flows ([`flows`]), the
//! QLAM Core-compatible token store with its locks and the single-flight refresh protocol
//! ([`store`]). The library never prints and never exits: it returns typed results and
//! [`Error`]s whose kind maps to an exit code; the `qlam-hpc` binary renders them.

pub mod config;
pub mod context;
pub mod discovery;
pub mod doctor;
pub mod duration;
pub mod env_vars;
pub mod error;
pub mod flows;
pub mod hooks;
pub mod http;
pub mod jwt;
pub mod secret;
pub mod session;
pub mod store;

pub use context::Ctx;
pub use error::{Error, ErrorKind, Result};
pub use secret::Secret;
