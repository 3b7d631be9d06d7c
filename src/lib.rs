#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
pub mod config;
pub mod demo;
pub mod phase;
pub mod route;
pub mod ids;
pub mod upstream;
pub mod answer;
pub mod cache;
pub mod proxy;
pub mod admin;
pub mod server;
pub mod telemetry;
