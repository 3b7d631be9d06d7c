#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
pub mod admin;
pub mod answer;
pub mod cache;
pub mod config;
pub mod demo;
pub mod ids;
pub mod metrics;
pub mod phase;
pub mod proxy;
pub mod route;
pub mod server;
pub mod telemetry;
pub mod upstream;
