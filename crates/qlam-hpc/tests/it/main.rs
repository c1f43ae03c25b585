//! CLI tests for the qlam-hpc binary: every test runs the real binary against its own
//! in-process test IdP and temp dir, never the real HOME.

mod bad_input;
mod browser;
mod config;
mod diagnose;
mod exec;
mod faults;
mod help;
mod herd;
mod locks;
mod login;
mod m2m;
mod refresh;
mod secrets;
mod status;
mod support;
mod token;
