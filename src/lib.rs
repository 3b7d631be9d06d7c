//! taskgate: a caching reverse-proxy sidecar for the Livepeer Studio task API.
//!
//! The request path reads top to bottom in [`proxy::Proxy::handle`]: [`route`] →
//! [`cache`] → coalesced [`upstream`] fetch → [`answer`] classification by [`phase`] →
//! store → respond. [`server`] owns the listeners and shutdown, [`admin`] the operator
//! routes, [`config`] the settings, and [`demo`] the simulated API behind `--demo`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod answer;
pub mod cache;
pub mod config;
pub mod cors;
pub mod demo;
pub mod ids;
#[cfg(feature = "redis")]
pub mod l2;
pub mod limit;
pub mod metrics;
pub mod phase;
pub mod proxy;
pub mod redact;
pub mod route;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod watch;
pub mod webhook;
