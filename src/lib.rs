//! taskgate: a caching reverse-proxy sidecar for the Livepeer Studio API.
//!
//! # Layout
//!
//! Read the request path first: [`Proxy::handle`] (in `proxy.rs`) takes one request through
//! route → request checks → limits → lookup (cache → back-off → coalesced fetch: the shared
//! level, then the API) → classify → store → respond → one access event. All of it up to
//! the cache lookup runs as hyper hands the request over (`Proxy::serve_now`): a hit is
//! answered there; what has to wait goes on in one boxed future (`Proxy::serve_later`).
//!
//! Dependencies point one way, from the leaves up (a CI step, `.ci/module-graph`, fails on
//! an import cycle):
//!
//! | layer | modules | owns |
//! |---|---|---|
//! | leaves | `secret`, `viewer`, `config`, `clock`, `ids`, `workers`, `resource`, `route`, `redact`, `limit`, `cors` | the per-core request threads, secrets, viewer tokens (JWT checks), settings, time, request ids, the resource kinds (tasks, assets: phases, lifetimes, webhook events), the route table, scrubbing (rules per kind), rate limits, CORS decisions |
//! | answers | `answer` (`error`, `respond`, `encode`) | classifying what the API said, the one error type (with its side and reason), the one place responses are built |
//! | levels | `secrets`, `upstream`, `cache` (`shared`, `redis`), `telemetry` (`metrics`) | the secrets in force and their live reload, the API client, memory + Redis + coalescing, logs, traces and metrics |
//! | features | `watch`, `webhook` | Server-Sent Events, Studio webhooks |
//! | handler | `proxy`, `admin` (`status`) | the public and the operator request paths (admin: probes, metrics, purge, the status page) |
//! | wiring | `listener`, `server` | the accept loop, start-up and shutdown |
//! | demo (feature `demo`) | `demo` | the simulated Studio API behind `--demo`; nothing above imports it |
//!
//! Adding a resource kind is one module under `resource/` and one [`Kind`] variant.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod admin;
mod answer;
mod cache;
mod clock;
pub mod config;
mod cors;
#[cfg(feature = "demo")]
pub mod demo;
mod ids;
mod limit;
mod listener;
mod proxy;
pub mod redact;
pub mod resource;
pub mod route;
pub mod secret;
pub mod secrets;
mod server;
mod sync;
pub mod telemetry;
mod upstream;
pub mod viewer;
mod watch;
mod webhook;
mod workers;

pub use admin::probe;
pub use answer::{
    respond::{build as build_response, full, Body},
    Answer, Audience, CacheControl, CacheStatus, Error, Head, NoStore, Policy, Side,
};
pub use cache::Cache;
pub use ids::TraceContext;
pub use listener::local_address;
pub use proxy::Proxy;
pub use resource::{Key, Kind, Phase};
pub use server::{run, start, Running, StartError};
pub use upstream::{Reply, SetupError, Upstream, UpstreamReport};
