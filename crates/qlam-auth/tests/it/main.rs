mod lock;

mod config;
mod discovery;
mod single_flight;
mod store_format;
mod support;
