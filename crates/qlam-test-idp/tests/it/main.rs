//! Integration tests of the test IdP, over real HTTP.

mod admin;
mod binary;
mod client_credentials;
mod common;
mod concurrency;
mod device;
mod discovery;
mod faults;
mod keys;
mod pkce;
mod private_key_jwt;
mod refresh;
mod revocation;
