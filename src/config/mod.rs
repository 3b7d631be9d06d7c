//! Typed configuration: one table of settings, read from four layers in order of precedence —
//! built-in values < TOML file < `TASKGATE_*` environment < command-line flags.
//!
//! # Layout
//!
//! - `mod.rs` (here): [`Config`], the typed result, [`load`], and the public surface.
//! - `settings`: the table ([`SETTINGS`]), one row per setting (key, built-in value, doc line, flag,
//!   parser). Defaults, environment names, flag names and `--help` lines, and the unknown-name
//!   checks all derive from it; adding a setting is a row plus a [`Config`] field.
//! - `sources`: the layers ([`Env`], the TOML file, the flags in [`Args`]), applied in order.
//! - `parse`: one parser per kind of value (durations, sizes, addresses, URLs, …).
//! - `error`: [`ConfigError`].
//!
//! A leaf: nothing here imports the proxy, the server or the demo. Run modes (`--demo`,
//! `--check-config`, `--healthcheck`) belong to the binary, which parses the command line and
//! hands over the file, the setting flags and the key to use when none is set ([`Args`]).
//!
//! # Guarantees
//!
//! - Every setting has one name, spelled three ways: `ttl_completed` in the file,
//!   `TASKGATE_TTL_COMPLETED` in the environment, and (for the common ones) `--ttl-completed`
//!   style flags. All three go through the same parser, so they accept the same values; so
//!   does the built-in value.
//! - Every value given is validated, even one a higher layer overrides: `--check-config` checks
//!   the whole file, not only what happens to be in effect.
//! - A bad configuration is one [`ConfigError`], one line, naming the setting as the user wrote
//!   it; unknown names are errors, so typos do not silently fall back to defaults.
//! - Secrets (the API key, the webhook secret, the Redis URL, which can hold a password) never
//!   appear in an error or a `Debug` print.
//! - Values are checked for syntax only: nothing here connects anywhere or builds a client.

mod error;
mod parse;
mod settings;
mod sources;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use crate::secret::{ApiKey, Secret};
pub use error::ConfigError;
pub use parse::{parse_duration, read_key_file};
pub use settings::{default_burst, flags, Builtin, Setting, SETTINGS};
pub use sources::{Args, Env};

/// The file read when `--config` is not given, relative to the working directory, if present.
pub const DEFAULT_CONFIG_FILE: &str = "config/taskgate.toml";
/// Where tasks are fetched by default: `{base}/task/{id}`.
pub const DEFAULT_UPSTREAM_URL: &str = "https://livepeer.studio/api";

/// Every environment name of a setting starts with this.
pub const ENV_PREFIX: &str = "TASKGATE_";

/// Reads the configuration: built-in values, then the TOML file (`--config`, else
/// [`DEFAULT_CONFIG_FILE`] when it exists), then the environment, then the flags.
pub fn load(args: &Args, env: &Env) -> Result<Config, ConfigError> {
    let file = match &args.config {
        Some(path) => Some(sources::ConfigFile::read(path, "--config ")?),
        None => sources::ConfigFile::read_if_present(Path::new(DEFAULT_CONFIG_FILE))?,
    };
    sources::build(args, env, file.as_ref())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS headers at all (the default).
    None,
    /// `*`: any origin is echoed back.
    Any,
    /// Exact origins, lower-cased, as `scheme://host[:port]`, and patterns
    /// `scheme://*.domain[:port]` (any subdomain of `domain`, not `domain` itself).
    List(Vec<String>),
}

/// The whole configuration. `Debug` is safe to log: secrets print as `***`.
#[derive(Clone, Debug)]
pub struct Config {
    pub api_key: ApiKey,
    /// Where the key was read from, when it was: re-read when it changes.
    pub api_key_file: Option<PathBuf>,
    /// Base URL without a trailing slash, e.g. `https://livepeer.studio/api`.
    pub upstream_url: String,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body: usize,
    /// A readable PEM file holding at least one certificate (checked by [`load`]).
    pub upstream_ca_file: Option<PathBuf>,
    pub upstream_concurrency: usize,
    pub cache_max_bytes: u64,
    pub ttl_completed: Duration,
    pub ttl_failed: Duration,
    /// A `ready` asset (it can still change: a webhook drops it at once).
    pub ttl_asset_ready: Duration,
    pub ttl_not_found: Duration,
    pub ttl_pending: Duration,
    pub cors_origins: CorsOrigins,
    /// Requests per second per client; 0 = off.
    pub rate_limit: f64,
    /// Token bucket size; at least 1 whenever `rate_limit` is on.
    pub rate_burst: f64,
    /// Per-client requests per second that need the API; 0 = off.
    pub miss_rate: f64,
    pub miss_burst: f64,
    pub trust_forwarded: bool,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub redact: bool,
    /// `redis://…` or `rediss://…`; a secret because it can carry a password.
    pub redis_url: Option<Secret>,
    pub redis_timeout: Duration,
    /// `None` = derived from the upstream URL, redaction and the API key.
    pub redis_namespace: Option<String>,
    /// `None` = the webhook route is off.
    pub webhook_secret: Option<Secret>,
    /// With a webhook secret, how long unfinished answers may be kept until a webhook names
    /// them; zero = not at all.
    pub webhook_trust_ttl: Duration,
    /// Webhook secrets, one per line (instead of `webhook_secret`).
    pub webhook_secret_file: Option<PathBuf>,
    /// Viewer access is on when this or one of the next two is set.
    pub access_secret: Option<Secret>,
    /// Access secrets, one per line.
    pub access_secret_file: Option<PathBuf>,
    /// PEM public keys (ES256, EdDSA).
    pub access_public_key_file: Option<PathBuf>,
    /// `None` (and no file) = purges only from loopback peers.
    pub admin_token: Option<Secret>,
    pub admin_token_file: Option<PathBuf>,
    /// How often the `*_file` secrets are checked for changes.
    pub secret_reload_interval: Duration,
    pub watch_interval: Duration,
    pub watch_max: usize,
    pub watch_max_per_client: usize,
    /// How long past its TTL a finished answer may be served while the API fails.
    pub stale_if_error: Duration,
    pub log_format: LogFormat,
    /// A `RUST_LOG`-syntax filter, already checked to parse.
    pub log: String,
    pub shutdown_grace: Duration,
    pub drain_timeout: Duration,
}

impl Config {
    /// The built-in values of the settings table, with the given key and upstream. Not
    /// validated as a whole: tests use it with a plain-http mock upstream on loopback.
    pub fn new(api_key: ApiKey, upstream_url: &str) -> Self {
        let mut cfg = settings::Draft::builtin(api_key).cfg;
        cfg.upstream_url = upstream_url.trim_end_matches('/').to_owned();
        cfg
    }

    /// Placeholders only, each overwritten at once by the table's built-in value (or, for
    /// `rate_burst`, its derived one): the defaults live in the table, not here. A field
    /// without a row would keep its placeholder: a test of the table fails if one has none.
    fn blank(api_key: ApiKey) -> Self {
        let zero = Duration::ZERO;
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            api_key,
            api_key_file: None,
            upstream_url: String::new(),
            listen: nowhere,
            admin_listen: nowhere,
            upstream_timeout: zero,
            connect_timeout: zero,
            max_body: 0,
            upstream_ca_file: None,
            upstream_concurrency: 0,
            cache_max_bytes: 0,
            ttl_completed: zero,
            ttl_failed: zero,
            ttl_asset_ready: zero,
            ttl_not_found: zero,
            ttl_pending: zero,
            cors_origins: CorsOrigins::None,
            rate_limit: 0.0,
            rate_burst: 0.0,
            miss_rate: 0.0,
            miss_burst: 0.0,
            trust_forwarded: false,
            max_connections: 0,
            max_connections_per_client: 0,
            header_timeout: zero,
            idle_timeout: zero,
            redact: false,
            redis_url: None,
            redis_timeout: zero,
            redis_namespace: None,
            webhook_secret: None,
            webhook_trust_ttl: zero,
            webhook_secret_file: None,
            access_secret: None,
            access_secret_file: None,
            access_public_key_file: None,
            admin_token: None,
            admin_token_file: None,
            secret_reload_interval: zero,
            watch_interval: zero,
            watch_max: 0,
            watch_max_per_client: 0,
            stale_if_error: zero,
            log_format: LogFormat::Json,
            log: String::new(),
            shutdown_grace: zero,
            drain_timeout: zero,
        }
    }
}

#[cfg(test)]
mod tests;
