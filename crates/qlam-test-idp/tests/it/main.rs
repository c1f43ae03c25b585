//! Integration tests of the test IdP, over real HTTP.

mod admin;
mod binary;
mod client_credentials;
mod common;
mod concurrency;
mod device;
mod discovery;
mod faults;
mod pkce;
mod refresh;
mod revocation;
