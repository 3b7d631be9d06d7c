//! Typed configuration. (stub: being written out in full)

use std::{fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

/// The Studio API key. `Debug` and `Display` print `***`; only [`ApiKey::expose`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        Self(key.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    None,
    Any,
    List(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub api_key: ApiKey,
    /// Base URL without a trailing slash, e.g. `https://livepeer.studio/api`.
    pub upstream_url: String,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body: usize,
    pub upstream_ca_file: Option<PathBuf>,
    pub upstream_concurrency: usize,
    pub cache_max_bytes: u64,
    pub ttl_completed: Duration,
    pub ttl_failed: Duration,
    pub ttl_not_found: Duration,
    pub ttl_pending: Duration,
    pub cors_origins: CorsOrigins,
    pub rate_limit: f64,
    pub rate_burst: f64,
    pub trust_forwarded: bool,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub redact: bool,
    pub log_format: LogFormat,
    pub log: String,
    pub shutdown_grace: Duration,
    pub drain_timeout: Duration,
}

impl Config {
    pub fn new(api_key: ApiKey, upstream_url: &str) -> Self {
        Self {
            api_key,
            upstream_url: upstream_url.trim_end_matches('/').to_owned(),
            listen: ([127, 0, 0, 1], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9090).into(),
            upstream_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_body: 1 << 20,
            upstream_ca_file: None,
            upstream_concurrency: 64,
            cache_max_bytes: 64 << 20,
            ttl_completed: Duration::from_secs(24 * 3600),
            ttl_failed: Duration::from_secs(30),
            ttl_not_found: Duration::from_secs(5),
            ttl_pending: Duration::ZERO,
            cors_origins: CorsOrigins::None,
            rate_limit: 0.0,
            rate_burst: 0.0,
            trust_forwarded: false,
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            redact: true,
            log_format: LogFormat::Json,
            log: "info".into(),
            shutdown_grace: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
        }
    }
}
