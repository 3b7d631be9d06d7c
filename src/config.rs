//! Typed configuration: one table of settings, read from four layers in order of precedence —
//! built-in defaults < TOML file < `TASKGATE_*` environment < command-line flags.
//!
//! Guarantees:
//! - Every setting has one name, spelled three ways: `ttl_completed` in the file,
//!   `TASKGATE_TTL_COMPLETED` in the environment, and (for the common ones) `--ttl-completed`
//!   style flags. All three go through the same parser, so they accept the same values.
//! - Every value given is validated, even one a higher layer overrides: `--check-config` checks
//!   the whole file, not only what happens to be in effect.
//! - A bad configuration is one [`ConfigError`], one line, naming the setting as the user wrote
//!   it; unknown names are errors, so typos do not silently fall back to defaults.
//! - Secrets (the API key, the webhook secret, the Redis URL, which can hold a password) never
//!   appear in an error or a `Debug` print.

use std::{
    collections::BTreeMap,
    fmt,
    io::Read,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use toml::de::{DeTable, DeValue};

/// The file read when `--config` is not given, relative to the working directory, if present.
pub const DEFAULT_CONFIG_FILE: &str = "config/taskgate.toml";
/// Where tasks are fetched by default: `{base}/task/{id}`.
pub const DEFAULT_UPSTREAM_URL: &str = "https://livepeer.studio/api";

const ENV_PREFIX: &str = "TASKGATE_";
/// Longest duration accepted anywhere. Far beyond any sensible TTL or timeout, and far below
/// what the cache (moka refuses TTLs over 1000 years) or `Instant` arithmetic would choke on.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);
/// A key file larger than this is not a key file (and reading stops there: think `/dev/zero`).
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;
const MISSING_KEY: &str =
    "missing (set TASKGATE_API_KEY or TASKGATE_API_KEY_FILE, or run with --demo)";

/// A value that must never be printed. `Debug` and `Display` print `***`; only
/// [`Secret::expose`] reveals it, so every place that uses the real value is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The Studio API key injected upstream.
pub type ApiKey = Secret;

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
    /// Exact origins, lower-cased, as `scheme://host[:port]`.
    List(Vec<String>),
}

/// The whole configuration. `Debug` is safe to log: secrets print as `***`.
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
    /// A readable PEM file holding at least one certificate (checked by [`load`]).
    pub upstream_ca_file: Option<PathBuf>,
    pub upstream_concurrency: usize,
    pub cache_max_bytes: u64,
    pub ttl_completed: Duration,
    pub ttl_failed: Duration,
    pub ttl_not_found: Duration,
    pub ttl_pending: Duration,
    pub cors_origins: CorsOrigins,
    /// Requests per second per client; 0 = off.
    pub rate_limit: f64,
    /// Token bucket size; at least 1 whenever `rate_limit` is on.
    pub rate_burst: f64,
    pub trust_forwarded: bool,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub redact: bool,
    /// `redis://…` or `rediss://…`; a secret because it can carry a password.
    pub redis_url: Option<Secret>,
    pub redis_timeout: Duration,
    /// `None` = the webhook route is off.
    pub webhook_secret: Option<Secret>,
    pub watch_interval: Duration,
    pub watch_max: usize,
    pub log_format: LogFormat,
    /// A `RUST_LOG`-syntax filter, already checked to parse.
    pub log: String,
    pub shutdown_grace: Duration,
    pub drain_timeout: Duration,
}

impl Config {
    /// The built-in defaults (SPEC's table) with the given key and upstream. Not validated:
    /// tests use it with a plain-http mock upstream on loopback.
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
            redis_url: None,
            redis_timeout: Duration::from_millis(50),
            webhook_secret: None,
            watch_interval: Duration::from_secs(2),
            watch_max: 1000,
            log_format: LogFormat::Json,
            log: "info".into(),
            shutdown_grace: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The command line. Setting flags are plain strings handed to the same parser as the
/// environment variable of that setting. There is deliberately no `--api-key`: a flag shows in
/// `ps` to every user of the machine.
#[derive(clap::Parser, Debug, Default)]
#[command(
    name = "taskgate",
    version,
    about = "Caching reverse proxy (sidecar) for the Livepeer Studio task API",
    after_help = "Every setting can also be set in the TOML file (see config/taskgate.toml) or \
                  as a TASKGATE_* environment variable; flags win over the environment, which \
                  wins over the file. The API key comes from TASKGATE_API_KEY or \
                  TASKGATE_API_KEY_FILE. Bad configuration exits with status 64."
)]
pub struct Cli {
    /// Read settings from this TOML file [default: config/taskgate.toml when present]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit: 0 when valid, 64 with one line when not
    #[arg(long)]
    pub check_config: bool,
    /// Check that a running taskgate's admin listener answers GET /healthz, and exit 0 (healthy)
    /// or 1: a health check for container images without a shell or curl
    #[arg(long)]
    pub healthcheck: bool,
    /// Run in front of a built-in simulated task API on loopback (no key, no network)
    #[arg(long)]
    pub demo: bool,
    /// Public listener, ip:port [env: TASKGATE_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listener, ip:port [env: TASKGATE_ADMIN_LISTEN] [default: 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Studio API base URL [env: TASKGATE_UPSTREAM_URL] [default: https://livepeer.studio/api]
    #[arg(long, value_name = "URL")]
    pub upstream_url: Option<String>,
    /// Read the API key from this file [env: TASKGATE_API_KEY_FILE]
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<String>,
    /// Comma list of exact allowed origins, or * [env: TASKGATE_CORS_ORIGINS]
    #[arg(long, value_name = "ORIGINS")]
    pub cors_origins: Option<String>,
    /// json or pretty [env: TASKGATE_LOG_FORMAT] [default: json]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, RUST_LOG syntax [env: TASKGATE_LOG, then RUST_LOG] [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

impl Cli {
    /// The setting flags, as (flag, setting key, value).
    fn settings(&self) -> [(&'static str, &'static str, Option<&str>); 7] {
        [
            ("--listen", "listen", self.listen.as_deref()),
            (
                "--admin-listen",
                "admin_listen",
                self.admin_listen.as_deref(),
            ),
            (
                "--upstream-url",
                "upstream_url",
                self.upstream_url.as_deref(),
            ),
            (
                "--api-key-file",
                "api_key_file",
                self.api_key_file.as_deref(),
            ),
            (
                "--cors-origins",
                "cors_origins",
                self.cors_origins.as_deref(),
            ),
            ("--log-format", "log_format", self.log_format.as_deref()),
            ("--log", "log", self.log.as_deref()),
        ]
    }
}

/// The environment variables configuration may read: `TASKGATE_*` and `RUST_LOG`. Handed to
/// [`load`] so tests build one with [`Env::from_pairs`] instead of mutating the process
/// environment (a data race under the parallel test runner).
#[derive(Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// `TASKGATE_*` variables whose name or value is not UTF-8: an error, reported by `load`.
    not_utf8: Vec<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let mut env = Self::default();
        for (name, value) in std::env::vars_os() {
            let lossy_name = name.to_string_lossy();
            if lossy_name != "RUST_LOG" && !lossy_name.starts_with(ENV_PREFIX) {
                continue;
            }
            match (name.to_str(), value.into_string()) {
                (Some(name), Ok(value)) => {
                    env.vars.insert(name.to_owned(), value);
                }
                // RUST_LOG belongs to everyone; an unusable one is simply not ours to use.
                (Some("RUST_LOG"), Err(_)) => {}
                _ => env.not_utf8.push(lossy_name.into_owned()),
            }
        }
        env
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let vars = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self {
            vars,
            not_utf8: Vec::new(),
        }
    }
}

/// Names only: the values include the API key.
impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

/// A bad configuration: the setting as the user wrote it (`TASKGATE_LISTEN`, `--listen`,
/// `listen in config/taskgate.toml`) and what is wrong with it. Displays as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    setting: String,
    problem: String,
}

impl ConfigError {
    fn new(setting: impl fmt::Display, problem: impl Into<String>) -> Self {
        // One line, whatever a lower layer (io, toml, tracing) put in its message.
        let problem = problem.into().replace(['\r', '\n'], " ");
        Self {
            setting: setting.to_string(),
            problem,
        }
    }

    /// The setting as the user wrote it, e.g. `TASKGATE_TTL_COMPLETED`.
    pub fn setting(&self) -> &str {
        &self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Reads the configuration: defaults, then the TOML file (`--config`, else
/// [`DEFAULT_CONFIG_FILE`] when it exists), then the environment, then the flags.
pub fn load(cli: &Cli, env: &Env) -> Result<Config, ConfigError> {
    let file = match &cli.config {
        Some(path) => Some(ConfigFile::read(path, "--config ")?),
        None => ConfigFile::read_if_present(Path::new(DEFAULT_CONFIG_FILE))?,
    };
    build(cli, env, file.as_ref())
}

/// [`load`] once the file (if any) is read: the layers are applied in order of precedence, so
/// a later value simply overwrites an earlier one.
fn build(cli: &Cli, env: &Env, file: Option<&ConfigFile>) -> Result<Config, ConfigError> {
    let mut draft = Draft {
        cfg: Config::new(ApiKey::new(""), DEFAULT_UPSTREAM_URL),
        rate_burst: None,
        key: None,
    };
    if let Some(file) = file {
        file.apply(&mut draft)?;
    }
    apply_env(&mut draft, env)?;
    for (flag, key, value) in cli.settings() {
        if let Some(value) = value {
            let setting = find_setting(key).expect("every setting flag names an entry of SETTINGS");
            setting.apply(&mut draft, value, &Origin::Flag(flag))?;
        }
    }
    draft.finish(cli.demo)
}

struct ConfigFile {
    path: PathBuf,
    text: String,
}

impl ConfigFile {
    fn read(path: &Path, label: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                format!("{label}{}", path.display()),
                format!("cannot read ({e})"),
            )
        })?;
        Ok(Self {
            path: path.to_owned(),
            text,
        })
    }

    /// The default file is optional, but one that exists and cannot be read is an error: the
    /// operator clearly meant it to be used.
    fn read_if_present(path: &Path) -> Result<Option<Self>, ConfigError> {
        match Self::read(path, "") {
            Err(_) if !path.exists() => Ok(None),
            other => other.map(Some),
        }
    }

    fn apply(&self, draft: &mut Draft) -> Result<(), ConfigError> {
        let table = DeTable::parse(&self.text).map_err(|e| {
            let at = e.span().map_or(0, |span| span.start).min(self.text.len());
            let line = 1 + self.text.as_bytes()[..at]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            ConfigError::new(
                format!("{} line {line}", self.path.display()),
                format!("not valid TOML ({})", e.message()),
            )
        })?;
        for (key, value) in table.get_ref() {
            let key: &str = key.get_ref();
            let origin = Origin::File {
                key: key.to_owned(),
                path: self.path.clone(),
            };
            if key == "api_key" {
                return Err(ConfigError::new(
                    origin,
                    "not accepted in a file: set TASKGATE_API_KEY or TASKGATE_API_KEY_FILE \
                     (or api_key_file here)",
                ));
            }
            let setting =
                find_setting(key).ok_or_else(|| ConfigError::new(&origin, "unknown setting"))?;
            let text = toml_value_text(setting, value.get_ref())
                .map_err(|problem| ConfigError::new(&origin, problem))?;
            setting.apply(draft, &text, &origin)?;
        }
        Ok(())
    }
}

/// A TOML value in the string form the setting's parser reads, so `max_body = 1048576` and
/// `max_body = "1MiB"` go through the same code.
fn toml_value_text(setting: &Setting, value: &DeValue<'_>) -> Result<String, String> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
            .map(|n| n.to_string())
            .map_err(|_| "integer out of range".to_owned()),
        DeValue::Float(x) => Ok(x.as_str().to_owned()),
        DeValue::Boolean(b) => Ok(b.to_string()),
        DeValue::Array(items) if setting.key == "cors_origins" => items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) if !s.contains(',') => Ok(s.to_string()),
                _ => Err("expected an array of origin strings".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|origins| origins.join(",")),
        other => Err(format!(
            "expected a string, number or boolean, found {}",
            other.type_str()
        )),
    }
}

fn apply_env(draft: &mut Draft, env: &Env) -> Result<(), ConfigError> {
    if let Some(name) = env.not_utf8.first() {
        return Err(ConfigError::new(name, "not valid UTF-8"));
    }
    // Two sources in one layer: neither wins, the operator must choose.
    if env.vars.contains_key("TASKGATE_API_KEY") && env.vars.contains_key("TASKGATE_API_KEY_FILE") {
        return Err(ConfigError::new(
            "TASKGATE_API_KEY_FILE",
            "set together with TASKGATE_API_KEY (set only one of them)",
        ));
    }
    for (name, value) in &env.vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        match SETTINGS.iter().find(|s| s.key.to_ascii_uppercase() == rest) {
            Some(setting) => setting.apply(draft, value, &Origin::Env(name))?,
            None if is_kubernetes_service_link(name, value) => {}
            None => return Err(ConfigError::new(name, "unknown setting")),
        }
    }
    // RUST_LOG is the environment's other spelling of TASKGATE_LOG, used only without it.
    if !env.vars.contains_key("TASKGATE_LOG") {
        if let Some(filter) = env.vars.get("RUST_LOG").filter(|f| !f.trim().is_empty()) {
            let setting = find_setting("log").expect("`log` is an entry of SETTINGS");
            setting.apply(draft, filter, &Origin::Env("RUST_LOG"))?;
        }
    }
    Ok(())
}

/// Kubernetes gives every pod `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT[_{NAME}]`,
/// `{SVC}_PORT=tcp://…` and `{SVC}_PORT_{N}_{PROTO}[_…]` for each Service in its namespace.
/// A Service named `taskgate…` thus puts `TASKGATE_*` variables in our environment that no one
/// wrote; refusing them as typos would stop the pod from starting. None of our settings has
/// these shapes.
fn is_kubernetes_service_link(name: &str, value: &str) -> bool {
    let parts: Vec<&str> = name.split('_').collect();
    let port_proto = parts.windows(3).any(|w| {
        w[0] == "PORT"
            && !w[1].is_empty()
            && w[1].bytes().all(|b| b.is_ascii_digit())
            && matches!(w[2], "TCP" | "UDP" | "SCTP")
    });
    port_proto
        || name.ends_with("_SERVICE_HOST")
        || name.ends_with("_SERVICE_PORT")
        || name.contains("_SERVICE_PORT_")
        || (name.ends_with("_PORT")
            && ["tcp://", "udp://", "sctp://"]
                .iter()
                .any(|p| value.starts_with(p)))
}

/// Where a value came from, displayed the way the user wrote it.
enum Origin<'a> {
    File { key: String, path: PathBuf },
    Env(&'a str),
    Flag(&'static str),
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { key, path } => write!(f, "{key} in {}", path.display()),
            Origin::Env(name) => f.write_str(name),
            Origin::Flag(flag) => f.write_str(flag),
        }
    }
}

/// The configuration being built, plus what can only be settled once every layer is in.
struct Draft {
    cfg: Config,
    /// Unset means "twice the rate", whatever layer sets the rate.
    rate_burst: Option<f64>,
    /// The highest layer's key source, and where it was named (for errors when reading it).
    key: Option<(KeySource, String)>,
}

enum KeySource {
    Inline(ApiKey),
    /// Read only at the end, so a key file named by a lower layer and overridden is not read.
    File(PathBuf),
}

impl Draft {
    fn finish(mut self, demo: bool) -> Result<Config, ConfigError> {
        let rate = self.cfg.rate_limit;
        // A bucket smaller than one token would refuse every request: with a low rate, 2 × rate
        // is raised to 1.
        self.cfg.rate_burst = match self.rate_burst {
            Some(burst) => burst,
            None if rate > 0.0 => (2.0 * rate).max(1.0),
            None => 0.0,
        };
        self.cfg.api_key = match self.key {
            Some((KeySource::Inline(key), _)) => key,
            Some((KeySource::File(path), origin)) => {
                read_key_file(&path).map_err(|problem| ConfigError::new(origin, problem))?
            }
            None if demo => ApiKey::new(crate::demo::DEMO_API_KEY),
            None => return Err(ConfigError::new("TASKGATE_API_KEY", MISSING_KEY)),
        };
        Ok(self.cfg)
    }
}

fn read_key_file(path: &Path) -> Result<ApiKey, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {path:?} ({e})"))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(format!("{path:?} is too large to hold an API key"));
    }
    // Secret mounts and `echo key > file` end with a newline; it is not part of the key.
    parse_api_key(text.trim_end()).map_err(|problem| format!("the key in {path:?} {problem}"))
}

/// One entry of the settings table: the file key (the environment name is derived from it)
/// and how a string value is parsed into the draft.
struct Setting {
    key: &'static str,
    /// Never echo the value in an error.
    secret: bool,
    apply: fn(&mut Draft, &str, &Origin<'_>) -> Result<(), String>,
}

impl Setting {
    fn apply(
        &self,
        draft: &mut Draft,
        value: &str,
        origin: &Origin<'_>,
    ) -> Result<(), ConfigError> {
        // Stray spaces around a number or an address are a formatting slip, not a new value;
        // secrets are taken byte for byte.
        let value = if self.secret { value } else { value.trim() };
        (self.apply)(draft, value, origin).map_err(|problem| {
            // Parsers of secrets never quote their input; this is the second lock on that door.
            let problem = if self.secret && !value.is_empty() {
                problem.replace(value, "***")
            } else {
                problem
            };
            ConfigError::new(origin, problem)
        })
    }
}

/// A setting that parses into the `Config` field of the same name.
macro_rules! field {
    ($field:ident, $parse:expr) => {
        field!($field, $parse, false)
    };
    ($field:ident, $parse:expr, secret) => {
        field!($field, $parse, true)
    };
    ($field:ident, $parse:expr, $secret:literal) => {
        Setting {
            key: stringify!($field),
            secret: $secret,
            apply: |draft, value, _| {
                draft.cfg.$field = $parse(value)?;
                Ok(())
            },
        }
    };
}

/// Every setting, in SPEC order. Adding one here makes it a file key, a `TASKGATE_*` variable
/// and a known name for the unknown-name check, all at once.
const SETTINGS: &[Setting] = &[
    Setting {
        key: "api_key",
        secret: true,
        apply: |draft, value, origin| {
            let key = parse_api_key(value).map_err(|problem| format!("the key {problem}"))?;
            draft.key = Some((KeySource::Inline(key), origin.to_string()));
            Ok(())
        },
    },
    Setting {
        key: "api_key_file",
        secret: false,
        apply: |draft, value, origin| {
            if value.is_empty() {
                return Err("empty (write the path of a file holding the key)".into());
            }
            draft.key = Some((KeySource::File(value.into()), origin.to_string()));
            Ok(())
        },
    },
    field!(upstream_url, parse_upstream_url),
    field!(listen, parse_addr),
    field!(admin_listen, parse_addr),
    field!(upstream_timeout, parse_positive_duration),
    field!(connect_timeout, parse_positive_duration),
    field!(max_body, parse_max_body),
    field!(upstream_ca_file, parse_ca_file),
    field!(upstream_concurrency, parse_count),
    field!(cache_max_bytes, parse_size),
    field!(ttl_completed, parse_duration),
    field!(ttl_failed, parse_duration),
    field!(ttl_not_found, parse_duration),
    field!(ttl_pending, parse_duration),
    field!(cors_origins, parse_cors_origins),
    field!(rate_limit, parse_rate),
    Setting {
        key: "rate_burst",
        secret: false,
        apply: |draft, value, _| {
            draft.rate_burst = Some(parse_burst(value)?);
            Ok(())
        },
    },
    field!(trust_forwarded, parse_bool),
    field!(max_connections, parse_count),
    field!(header_timeout, parse_positive_duration),
    field!(idle_timeout, parse_positive_duration),
    field!(redact, parse_bool),
    field!(redis_url, parse_redis_url, secret),
    field!(redis_timeout, parse_positive_duration),
    field!(webhook_secret, parse_webhook_secret, secret),
    field!(watch_interval, parse_positive_duration),
    field!(watch_max, parse_count),
    field!(log_format, parse_log_format),
    field!(log, parse_log),
    field!(shutdown_grace, parse_duration),
    field!(drain_timeout, parse_duration),
];

fn find_setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

// Parsers. Each takes the value as written and returns what is wrong as a phrase that follows
// the setting's name: `"3 days" is not a duration (write …)`.

fn parse_api_key(value: &str) -> Result<ApiKey, &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    // It goes into an `Authorization` header; only visible ASCII is safe there.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("contains characters not allowed in an HTTP header \
                    (only visible ASCII, no spaces or newlines)");
    }
    Ok(ApiKey::new(value))
}

/// `250ms`, `30s`, `5m`, `24h`, `7d`, or a bare `0`.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("{value:?} is not a duration (write 250ms, 30s, 5m or 24h)");
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        _ => return Err(bad()),
    };
    match duration {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("{value:?} is too long (at most 3650d)")),
    }
}

/// A duration where 0 would be meaningless (a timeout that always fires, a busy poll loop).
fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        Duration::ZERO => Err(format!("{value:?} must be more than 0 (e.g. 500ms or 10s)")),
        d => Ok(d),
    }
}

/// `64MiB`, `512KiB`, `1GiB`, `10MB` (decimal), `100B`, or bare bytes.
fn parse_size(value: &str) -> Result<u64, String> {
    let bad =
        || format!("{value:?} is not a size (write 512KiB, 64MiB, 1GiB, 10MB or a byte count)");
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("{value:?} is too large"))
}

fn parse_max_body(value: &str) -> Result<usize, String> {
    match usize::try_from(parse_size(value)?) {
        Ok(0) => Err(format!("{value:?} must be at least 1 byte")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{value:?} is too large")),
    }
}

/// A count where 0 would be meaningless (no connections, no fetches, no watches).
fn parse_count(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{value:?} is not a whole number of at least 1")),
    }
}

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{value:?} is not a rate (write requests per second, e.g. 20 or 2.5; 0 is off)"
        )),
    }
}

fn parse_burst(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(b) if b.is_finite() && b >= 1.0 => Ok(b),
        _ => Err(format!(
            "{value:?} is not a bucket size (write a number of at least 1)"
        )),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{value:?} is not a boolean (write true or false)")),
    }
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("{value:?} is not an address (write ip:port, e.g. 127.0.0.1:8080 or [::]:8080)")
    })
}

fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    match value.to_ascii_lowercase().as_str() {
        "json" => Ok(LogFormat::Json),
        "pretty" => Ok(LogFormat::Pretty),
        _ => Err(format!(
            "{value:?} is not a log format (write json or pretty)"
        )),
    }
}

/// Checked here so a typo is a startup error rather than a silently different filter.
fn parse_log(value: &str) -> Result<String, String> {
    let expected = "write e.g. info or taskgate=debug,warn";
    if value.is_empty() {
        return Err(format!("empty ({expected})"));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("{value:?} is not a log filter ({e}; {expected})"))
}

/// An absolute `https` URL, or `http` to loopback only: the API key travels in a header, and
/// plain http elsewhere would send it in clear.
fn parse_upstream_url(value: &str) -> Result<String, String> {
    // Checked before anything quotes the value: it could be `https://user:password@host`.
    if value.contains('@') {
        return Err("must not contain user:password@ (the key is sent as a header)".into());
    }
    let expected = "write an absolute URL such as https://livepeer.studio/api";
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("{value:?} is not a URL ({expected})"))?;
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(format!("{value:?} is not an absolute URL ({expected})"));
    };
    if uri.query().is_some() || value.contains('#') {
        return Err(format!("{value:?} must not have a query or fragment"));
    }
    match scheme {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(format!(
                "{value:?} would send the API key in clear: use https (http only to loopback)"
            ))
        }
        _ => return Err(format!("{value:?} is not an https URL ({expected})")),
    }
    Ok(value.trim_end_matches('/').to_owned())
}

fn is_loopback(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checked at load time so a wrong mount fails at startup, not at the first upstream call.
fn parse_ca_file(value: &str) -> Result<Option<PathBuf>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read_to_string(value).map_err(|e| format!("cannot read {value:?} ({e})"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{value:?} holds no PEM certificate"));
    }
    Ok(Some(value.into()))
}

/// Empty = none, `*` = any, else a comma list of exact origins.
fn parse_cors_origins(value: &str) -> Result<CorsOrigins, String> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    match entries.as_slice() {
        [] => Ok(CorsOrigins::None),
        ["*"] => Ok(CorsOrigins::Any),
        _ => entries
            .iter()
            .map(|e| parse_origin(e))
            .collect::<Result<_, _>>()
            .map(CorsOrigins::List),
    }
}

/// `scheme://host[:port]`, lower-cased because browsers send the `Origin` header that way.
fn parse_origin(entry: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!("{entry:?} is not an origin ({why}; write scheme://host[:port], e.g. https://app.example.com)")
    };
    if entry == "*" {
        return Err("\"*\" cannot be combined with other origins".into());
    }
    let uri: http::Uri = entry.parse().map_err(|_| bad("not a URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(bad("not absolute"));
    };
    if !matches!(scheme, "http" | "https") || authority.as_str().contains('@') {
        return Err(bad("http or https, no user"));
    }
    let origin = format!("{scheme}://{authority}").to_ascii_lowercase();
    if origin != entry.to_ascii_lowercase() {
        return Err(bad("no path, query or trailing slash"));
    }
    Ok(origin)
}

/// Empty = off. The value is never quoted: it can hold a password.
fn parse_redis_url(value: &str) -> Result<Option<Secret>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let rest = value
        .strip_prefix("redis://")
        .or_else(|| value.strip_prefix("rediss://"));
    match rest {
        Some(rest) if !rest.is_empty() => Ok(Some(Secret::new(value))),
        _ => Err("the value (hidden) is not a Redis URL \
                  (write redis://host:port/db or rediss://host:port/db)"
            .into()),
    }
}

/// Empty = the webhook route is off (SPEC's default).
fn parse_webhook_secret(value: &str) -> Result<Option<Secret>, String> {
    Ok((!value.is_empty()).then(|| Secret::new(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Distinctive strings: a test fails if one shows up in any output.
    const KEY: &str = "sk-TEST-7f3a9c-SHOULD-NEVER-PRINT";
    const WEBHOOK: &str = "whsec-TEST-SHOULD-NEVER-PRINT";
    const REDIS_PASSWORD: &str = "redispw-TEST-SHOULD-NEVER-PRINT";

    /// A directory of its own under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("taskgate-config-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir is writable");
            Self(dir)
        }

        fn file(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).expect("temp file is writable");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key_env<'a>(more: &[(&'a str, &'a str)]) -> Env {
        Env::from_pairs([("TASKGATE_API_KEY", KEY)].iter().chain(more).copied())
    }

    fn file(text: &str) -> ConfigFile {
        ConfigFile {
            path: "test.toml".into(),
            text: text.into(),
        }
    }

    /// Loads with the key plus `vars`, no file, no flags.
    fn with_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        build(&Cli::default(), &key_env(vars), None)
    }

    fn with_file(text: &str) -> Result<Config, ConfigError> {
        build(&Cli::default(), &key_env(&[]), Some(&file(text)))
    }

    fn err(result: Result<Config, ConfigError>) -> String {
        let e = result.expect_err("configuration should be refused");
        let text = e.to_string();
        assert!(!text.contains('\n'), "error is not one line: {text}");
        text
    }

    #[test]
    fn defaults_match_the_spec() {
        let cfg = with_env(&[]).unwrap();
        assert_eq!(cfg.api_key.expose(), KEY);
        assert_eq!(cfg.upstream_url, "https://livepeer.studio/api");
        assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(cfg.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(cfg.upstream_timeout, Duration::from_secs(10));
        assert_eq!(cfg.connect_timeout, Duration::from_secs(2));
        assert_eq!(cfg.max_body, 1024 * 1024);
        assert_eq!(cfg.upstream_ca_file, None);
        assert_eq!(cfg.upstream_concurrency, 64);
        assert_eq!(cfg.cache_max_bytes, 64 * 1024 * 1024);
        assert_eq!(cfg.ttl_completed, Duration::from_secs(86_400));
        assert_eq!(cfg.ttl_failed, Duration::from_secs(30));
        assert_eq!(cfg.ttl_not_found, Duration::from_secs(5));
        assert_eq!(cfg.ttl_pending, Duration::ZERO);
        assert_eq!(cfg.cors_origins, CorsOrigins::None);
        assert_eq!(cfg.rate_limit, 0.0);
        assert_eq!(cfg.rate_burst, 0.0);
        assert!(!cfg.trust_forwarded);
        assert_eq!(cfg.max_connections, 10_000);
        assert_eq!(cfg.header_timeout, Duration::from_secs(10));
        assert_eq!(cfg.idle_timeout, Duration::from_secs(60));
        assert!(cfg.redact);
        assert!(cfg.redis_url.is_none());
        assert_eq!(cfg.redis_timeout, Duration::from_millis(50));
        assert!(cfg.webhook_secret.is_none());
        assert_eq!(cfg.watch_interval, Duration::from_secs(2));
        assert_eq!(cfg.watch_max, 1000);
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.log, "info");
        assert_eq!(cfg.shutdown_grace, Duration::ZERO);
        assert_eq!(cfg.drain_timeout, Duration::from_secs(10));
    }

    #[test]
    fn config_new_and_load_agree_on_defaults() {
        let loaded = with_env(&[]).unwrap();
        let new = Config::new(ApiKey::new(KEY), DEFAULT_UPSTREAM_URL);
        assert_eq!(format!("{loaded:?}"), format!("{new:?}"));
    }

    #[test]
    fn the_shipped_config_file_loads_and_changes_nothing() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let cli = Cli {
            config: Some(path),
            ..Cli::default()
        };
        let cfg = load(&cli, &key_env(&[])).unwrap();
        let new = Config::new(ApiKey::new(KEY), DEFAULT_UPSTREAM_URL);
        assert_eq!(format!("{cfg:?}"), format!("{new:?}"));
    }

    #[test]
    fn the_shipped_config_file_documents_every_setting_and_nothing_else() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let text = std::fs::read_to_string(path).unwrap();
        let documented: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# ")?.split_once(" = "))
            .map(|(key, _)| key)
            .collect();
        for key in &documented {
            assert!(find_setting(key).is_some(), "{key} is not a setting");
        }
        for setting in SETTINGS.iter().filter(|s| s.key != "api_key") {
            assert!(
                documented.contains(&setting.key),
                "{} is undocumented",
                setting.key
            );
        }
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = TempDir::new();
        let toml = dir.file(
            "taskgate.toml",
            "listen = \"127.0.0.1:1001\"\nadmin_listen = \"127.0.0.1:2001\"\n\
             log_format = \"pretty\"\nttl_failed = \"1m\"\n",
        );
        let cli = Cli {
            config: Some(toml),
            listen: Some("127.0.0.1:1003".into()),
            ..Cli::default()
        };
        let env = key_env(&[
            ("TASKGATE_LISTEN", "127.0.0.1:1002"),
            ("TASKGATE_ADMIN_LISTEN", "127.0.0.1:2002"),
        ]);
        let cfg = load(&cli, &env).unwrap();
        assert_eq!(cfg.listen.port(), 1003, "flag wins");
        assert_eq!(cfg.admin_listen.port(), 2002, "env beats file");
        assert_eq!(cfg.log_format, LogFormat::Pretty, "file beats default");
        assert_eq!(cfg.ttl_failed, Duration::from_secs(60));
        assert_eq!(cfg.ttl_completed, Duration::from_secs(86_400), "default");
    }

    #[test]
    fn an_overridden_bad_value_is_still_an_error() {
        let result = build(
            &Cli::default(),
            &key_env(&[("TASKGATE_LISTEN", "127.0.0.1:1")]),
            Some(&file("listen = \"nope\"")),
        );
        assert!(err(result).starts_with("listen in test.toml: \"nope\" is not an address"));
    }

    #[test]
    fn an_explicit_config_file_that_cannot_be_read_is_an_error() {
        let cli = Cli {
            config: Some("/nonexistent/taskgate.toml".into()),
            ..Cli::default()
        };
        let e = err(load(&cli, &key_env(&[])));
        assert!(
            e.starts_with("--config /nonexistent/taskgate.toml: cannot read ("),
            "{e}"
        );
    }

    #[test]
    fn invalid_toml_names_the_file_and_line() {
        let e = err(with_file("ttl_failed = \"1m\"\nlisten = \n"));
        assert!(e.starts_with("test.toml line 2: not valid TOML"), "{e}");
    }

    #[test]
    fn flags_use_the_same_parsers_and_are_named_as_flags() {
        let cli = Cli {
            listen: Some("localhost".into()),
            ..Cli::default()
        };
        let e = err(build(&cli, &key_env(&[]), None));
        assert!(
            e.starts_with("--listen: \"localhost\" is not an address"),
            "{e}"
        );
        let cli = Cli {
            log_format: Some("pretty".into()),
            cors_origins: Some("*".into()),
            upstream_url: Some("http://127.0.0.1:9999/".into()),
            ..Cli::default()
        };
        let cfg = build(&cli, &key_env(&[]), None).unwrap();
        assert_eq!(cfg.log_format, LogFormat::Pretty);
        assert_eq!(cfg.cors_origins, CorsOrigins::Any);
        assert_eq!(cfg.upstream_url, "http://127.0.0.1:9999");
    }

    #[test]
    fn every_spec_variable_is_a_known_setting() {
        for name in [
            "API_KEY",
            "API_KEY_FILE",
            "UPSTREAM_URL",
            "LISTEN",
            "ADMIN_LISTEN",
            "UPSTREAM_TIMEOUT",
            "CONNECT_TIMEOUT",
            "MAX_BODY",
            "UPSTREAM_CA_FILE",
            "UPSTREAM_CONCURRENCY",
            "CACHE_MAX_BYTES",
            "TTL_COMPLETED",
            "TTL_FAILED",
            "TTL_NOT_FOUND",
            "TTL_PENDING",
            "CORS_ORIGINS",
            "RATE_LIMIT",
            "RATE_BURST",
            "TRUST_FORWARDED",
            "MAX_CONNECTIONS",
            "HEADER_TIMEOUT",
            "IDLE_TIMEOUT",
            "REDACT",
            "REDIS_URL",
            "REDIS_TIMEOUT",
            "WEBHOOK_SECRET",
            "WATCH_INTERVAL",
            "WATCH_MAX",
            "LOG_FORMAT",
            "LOG",
            "SHUTDOWN_GRACE",
            "DRAIN_TIMEOUT",
        ] {
            assert!(find_setting(&name.to_ascii_lowercase()).is_some(), "{name}");
        }
        assert_eq!(SETTINGS.len(), 32);
    }

    #[test]
    fn unknown_env_setting_is_an_error() {
        let e = err(with_env(&[("TASKGATE_TTL_COMPLETD", "1h")]));
        assert_eq!(e, "TASKGATE_TTL_COMPLETD: unknown setting");
        // Names are upper case, as SPEC writes them.
        let e = err(with_env(&[("TASKGATE_ttl_completed", "1h")]));
        assert_eq!(e, "TASKGATE_ttl_completed: unknown setting");
    }

    #[test]
    fn other_env_vars_are_ignored() {
        assert!(with_env(&[("PATH", "/bin"), ("TASKGATEWAY", "x")]).is_ok());
    }

    #[test]
    fn kubernetes_service_links_are_not_mistaken_for_typos() {
        let cfg = with_env(&[
            ("TASKGATE_SERVICE_HOST", "10.0.0.7"),
            ("TASKGATE_SERVICE_PORT", "8080"),
            ("TASKGATE_SERVICE_PORT_HTTP", "8080"),
            ("TASKGATE_PORT", "tcp://10.0.0.7:8080"),
            ("TASKGATE_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
            ("TASKGATE_PORT_8080_TCP_PROTO", "tcp"),
            ("TASKGATE_PORT_8080_TCP_PORT", "8080"),
            ("TASKGATE_PORT_8080_TCP_ADDR", "10.0.0.7"),
            ("TASKGATE_ADMIN_SERVICE_HOST", "10.0.0.8"),
        ]);
        assert!(cfg.is_ok(), "{cfg:?}");
        // A guessed setting name is still caught.
        let e = err(with_env(&[("TASKGATE_PORT", "8080")]));
        assert_eq!(e, "TASKGATE_PORT: unknown setting");
    }

    #[test]
    fn non_utf8_env_value_is_an_error() {
        let mut env = key_env(&[]);
        env.not_utf8.push("TASKGATE_LISTEN".into());
        let e = err(build(&Cli::default(), &env, None));
        assert_eq!(e, "TASKGATE_LISTEN: not valid UTF-8");
    }

    #[test]
    fn unknown_toml_key_names_the_file_and_key() {
        assert_eq!(
            err(with_file("ttl_complete = \"1h\"")),
            "ttl_complete in test.toml: unknown setting"
        );
        // Sections are not part of the format: the file is flat.
        assert_eq!(
            err(with_file("[cache]\nttl_completed = \"1h\"")),
            "cache in test.toml: unknown setting"
        );
    }

    #[test]
    fn api_key_in_toml_is_refused() {
        let e = err(with_file(&format!("api_key = \"{KEY}\"")));
        assert!(
            e.starts_with("api_key in test.toml: not accepted in a file"),
            "{e}"
        );
        assert!(e.contains("TASKGATE_API_KEY_FILE"));
        assert!(!e.contains(KEY));
    }

    #[test]
    fn toml_values_may_be_strings_integers_booleans_or_origin_arrays() {
        let cfg = with_file(
            "max_body = 2048\nwatch_max = 0x10\nredact = false\nrate_limit = 2.5\n\
             cors_origins = [\"https://a.example\", \"http://localhost:3000\"]\n\
             cache_max_bytes = \"1GiB\"\n",
        )
        .unwrap();
        assert_eq!(cfg.max_body, 2048);
        assert_eq!(cfg.watch_max, 16);
        assert!(!cfg.redact);
        assert_eq!(cfg.rate_limit, 2.5);
        assert_eq!(
            cfg.cors_origins,
            CorsOrigins::List(vec![
                "https://a.example".into(),
                "http://localhost:3000".into()
            ])
        );
        assert_eq!(cfg.cache_max_bytes, 1 << 30);
    }

    #[test]
    fn toml_values_of_the_wrong_shape_are_errors() {
        assert_eq!(
            err(with_file("listen = [\"127.0.0.1:1\"]")),
            "listen in test.toml: expected a string, number or boolean, found array"
        );
        assert_eq!(
            err(with_file("ttl_failed = 30")),
            "ttl_failed in test.toml: \"30\" is not a duration (write 250ms, 30s, 5m or 24h)"
        );
        assert!(err(with_file("cors_origins = [1]")).contains("array of origin strings"));
    }

    #[test]
    fn durations_accept_the_documented_forms() {
        for (text, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("24h", Duration::from_secs(86_400)),
            ("2d", Duration::from_secs(172_800)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn durations_reject_anything_else() {
        for text in [
            "",
            "3 days",
            "30",
            "1.5s",
            "-1s",
            "s",
            "10S",
            "1w",
            "99999999999999999999s",
            "3651d",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(
            err(with_env(&[("TASKGATE_TTL_COMPLETED", "3 days")])),
            "TASKGATE_TTL_COMPLETED: \"3 days\" is not a duration (write 250ms, 30s, 5m or 24h)"
        );
    }

    #[test]
    fn timeouts_and_intervals_must_be_positive_but_ttls_may_be_zero() {
        let e = err(with_env(&[("TASKGATE_WATCH_INTERVAL", "0s")]));
        assert!(
            e.starts_with("TASKGATE_WATCH_INTERVAL: \"0s\" must be more than 0"),
            "{e}"
        );
        assert!(err(with_env(&[("TASKGATE_UPSTREAM_TIMEOUT", "0")])).contains("more than 0"));
        let cfg = with_env(&[
            ("TASKGATE_TTL_NOT_FOUND", "0s"),
            ("TASKGATE_DRAIN_TIMEOUT", "0"),
        ]);
        assert_eq!(cfg.unwrap().ttl_not_found, Duration::ZERO);
    }

    #[test]
    fn sizes_accept_binary_decimal_and_bare_bytes() {
        for (text, expected) in [
            ("64MiB", 64 << 20),
            ("512KiB", 512 << 10),
            ("1GiB", 1 << 30),
            ("10MB", 10_000_000),
            ("3KB", 3_000),
            ("2GB", 2_000_000_000),
            ("100B", 100),
            ("4096", 4096),
            ("64 MiB", 64 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(expected), "{text}");
        }
        for text in ["", "MiB", "1.5MiB", "64TiB", "-1", "64 M", "99999999999GiB"] {
            assert!(parse_size(text).is_err(), "{text}");
        }
        assert!(err(with_env(&[("TASKGATE_MAX_BODY", "0")])).contains("at least 1 byte"));
        assert!(err(with_env(&[("TASKGATE_CACHE_MAX_BYTES", "lots")])).contains("is not a size"));
    }

    #[test]
    fn addresses_are_ip_and_port() {
        assert_eq!(parse_addr("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        assert_eq!(parse_addr("0.0.0.0:0"), Ok("0.0.0.0:0".parse().unwrap()));
        for text in [
            "",
            "127.0.0.1",
            ":8080",
            "localhost:8080",
            "127.0.0.1:99999",
        ] {
            assert!(parse_addr(text).is_err(), "{text}");
        }
        let e = err(with_env(&[("TASKGATE_ADMIN_LISTEN", "nope")]));
        assert!(
            e.starts_with("TASKGATE_ADMIN_LISTEN: \"nope\" is not an address"),
            "{e}"
        );
    }

    #[test]
    fn values_are_trimmed_of_surrounding_spaces() {
        let cfg = with_env(&[
            ("TASKGATE_LISTEN", " 127.0.0.1:7 "),
            ("TASKGATE_TTL_FAILED", "1m\n"),
        ]);
        let cfg = cfg.unwrap();
        assert_eq!(cfg.listen.port(), 7);
        assert_eq!(cfg.ttl_failed, Duration::from_secs(60));
    }

    #[test]
    fn booleans_accept_true_false_and_friends() {
        for text in ["true", "TRUE", "1", "yes", "on"] {
            assert_eq!(parse_bool(text), Ok(true), "{text}");
        }
        for text in ["false", "False", "0", "no", "off"] {
            assert_eq!(parse_bool(text), Ok(false), "{text}");
        }
        for text in ["", "2", "maybe", "enabled"] {
            assert!(parse_bool(text).is_err(), "{text}");
        }
    }

    #[test]
    fn counts_must_be_at_least_one() {
        assert_eq!(parse_count("1"), Ok(1));
        assert_eq!(parse_count("10000"), Ok(10_000));
        for text in ["0", "-1", "", "1.5", "many"] {
            assert!(parse_count(text).is_err(), "{text}");
        }
        for var in [
            "TASKGATE_UPSTREAM_CONCURRENCY",
            "TASKGATE_MAX_CONNECTIONS",
            "TASKGATE_WATCH_MAX",
        ] {
            let e = err(with_env(&[(var, "0")]));
            assert_eq!(
                e,
                format!("{var}: \"0\" is not a whole number of at least 1")
            );
        }
    }

    #[test]
    fn rate_limit_is_a_non_negative_number_and_burst_defaults_to_twice_it() {
        let cfg = with_env(&[("TASKGATE_RATE_LIMIT", "5")]).unwrap();
        assert_eq!((cfg.rate_limit, cfg.rate_burst), (5.0, 10.0));
        let cfg = with_env(&[("TASKGATE_RATE_LIMIT", "0.2")]).unwrap();
        assert_eq!(
            cfg.rate_burst, 1.0,
            "a bucket must hold at least one request"
        );
        let cfg = with_env(&[("TASKGATE_RATE_LIMIT", "5"), ("TASKGATE_RATE_BURST", "3")]).unwrap();
        assert_eq!(cfg.rate_burst, 3.0);
        // The rate from the env and the burst default work across layers.
        let cfg = build(
            &Cli::default(),
            &key_env(&[("TASKGATE_RATE_LIMIT", "4")]),
            Some(&file("rate_limit = 1")),
        );
        assert_eq!(cfg.unwrap().rate_burst, 8.0);
        for text in ["-1", "inf", "NaN", "fast"] {
            assert!(parse_rate(text).is_err(), "{text}");
        }
        assert!(err(with_env(&[("TASKGATE_RATE_BURST", "0.5")])).contains("at least 1"));
    }

    #[test]
    fn log_format_is_json_or_pretty() {
        assert_eq!(parse_log_format("pretty"), Ok(LogFormat::Pretty));
        assert_eq!(parse_log_format("JSON"), Ok(LogFormat::Json));
        assert!(parse_log_format("text").is_err());
    }

    #[test]
    fn log_filter_is_checked_and_falls_back_to_rust_log() {
        let cfg = with_env(&[("RUST_LOG", "debug")]).unwrap();
        assert_eq!(cfg.log, "debug");
        let cfg = with_env(&[
            ("RUST_LOG", "debug"),
            ("TASKGATE_LOG", "warn,taskgate=info"),
        ]);
        assert_eq!(cfg.unwrap().log, "warn,taskgate=info");
        assert_eq!(with_env(&[("RUST_LOG", "")]).unwrap().log, "info");
        let e = err(with_env(&[("TASKGATE_LOG", "taskgate=loud")]));
        assert!(
            e.starts_with("TASKGATE_LOG: \"taskgate=loud\" is not a log filter"),
            "{e}"
        );
        let e = err(with_env(&[("RUST_LOG", "x=loud")]));
        assert!(e.starts_with("RUST_LOG: "), "{e}");
    }

    #[test]
    fn upstream_url_accepts_https_and_trims_the_trailing_slash() {
        assert_eq!(
            parse_upstream_url("https://livepeer.studio/api/"),
            Ok("https://livepeer.studio/api".into())
        );
        assert_eq!(
            parse_upstream_url("https://example.com:8443"),
            Ok("https://example.com:8443".into())
        );
        assert_eq!(
            parse_upstream_url("HTTPS://Example.com/"),
            Ok("HTTPS://Example.com".into())
        );
    }

    #[test]
    fn http_upstream_is_allowed_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:8081",
            "http://127.3.2.1/api",
            "http://localhost:9000/api/",
            "http://[::1]:9000",
        ] {
            assert!(parse_upstream_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://livepeer.studio/api",
            "http://10.0.0.1",
            "http://[::2]:80",
        ] {
            let e = parse_upstream_url(bad).unwrap_err();
            assert!(e.contains("would send the API key in clear"), "{bad}: {e}");
        }
        let e = err(with_env(&[(
            "TASKGATE_UPSTREAM_URL",
            "http://api.example/",
        )]));
        assert!(
            e.starts_with("TASKGATE_UPSTREAM_URL: \"http://api.example/\""),
            "{e}"
        );
    }

    #[test]
    fn upstream_url_must_be_absolute_without_query_fragment_or_user() {
        for bad in [
            "",
            "livepeer.studio/api",
            "/api",
            "ftp://livepeer.studio",
            "https://livepeer.studio/api?x=1",
            "https://livepeer.studio/api#top",
            "https://",
        ] {
            assert!(parse_upstream_url(bad).is_err(), "{bad}");
        }
        let e = parse_upstream_url("https://user:hunter2@livepeer.studio").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn upstream_ca_file_must_exist_and_hold_a_certificate() {
        let dir = TempDir::new();
        let good = dir.file(
            "ca.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        let junk = dir.file("junk.pem", "not a certificate");
        let good_text = good.to_str().unwrap();
        let cfg = with_env(&[("TASKGATE_UPSTREAM_CA_FILE", good_text)]).unwrap();
        assert_eq!(cfg.upstream_ca_file, Some(good.clone()));
        let e = err(with_env(&[(
            "TASKGATE_UPSTREAM_CA_FILE",
            junk.to_str().unwrap(),
        )]));
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = err(with_env(&[(
            "TASKGATE_UPSTREAM_CA_FILE",
            "/nonexistent/ca.pem",
        )]));
        assert!(
            e.starts_with("TASKGATE_UPSTREAM_CA_FILE: cannot read \"/nonexistent/ca.pem\" ("),
            "{e}"
        );
    }

    #[test]
    fn cors_origins_are_none_any_or_an_exact_list() {
        assert_eq!(parse_cors_origins(""), Ok(CorsOrigins::None));
        assert_eq!(parse_cors_origins(" , "), Ok(CorsOrigins::None));
        assert_eq!(parse_cors_origins("*"), Ok(CorsOrigins::Any));
        assert_eq!(
            parse_cors_origins("https://App.Example.com, http://localhost:3000,"),
            Ok(CorsOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into()
            ]))
        );
    }

    #[test]
    fn a_bad_cors_origin_is_named() {
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "app.example.com",
            "ftp://app.example.com",
            "https://u@app.example.com",
            "https://a.example,*",
        ] {
            assert!(parse_cors_origins(bad).is_err(), "{bad}");
        }
        let e = err(with_env(&[(
            "TASKGATE_CORS_ORIGINS",
            "https://ok.example,https://bad.example/",
        )]));
        assert!(
            e.starts_with("TASKGATE_CORS_ORIGINS: \"https://bad.example/\" is not an origin"),
            "{e}"
        );
    }

    #[test]
    fn redis_url_needs_a_redis_scheme_and_empty_means_off() {
        let url = format!("redis://:{REDIS_PASSWORD}@10.0.0.5:6379/0");
        let cfg = with_env(&[("TASKGATE_REDIS_URL", &url)]).unwrap();
        assert_eq!(cfg.redis_url.unwrap().expose(), url);
        assert!(with_env(&[("TASKGATE_REDIS_URL", "rediss://cache:6380")]).is_ok());
        assert!(with_env(&[("TASKGATE_REDIS_URL", "")])
            .unwrap()
            .redis_url
            .is_none());
        let bad = format!("http://:{REDIS_PASSWORD}@cache:6379");
        let e = err(with_env(&[("TASKGATE_REDIS_URL", &bad)]));
        assert!(e.starts_with("TASKGATE_REDIS_URL: the value (hidden) is not a Redis URL"));
        assert!(!e.contains(REDIS_PASSWORD));
        assert!(err(with_env(&[("TASKGATE_REDIS_URL", "redis://")])).contains("not a Redis URL"));
        // Past the scheme check, the client's parser has the last word; the value stays hidden.
        #[cfg(feature = "redis")]
        {
            let bad = format!("redis://:{REDIS_PASSWORD}@cache:notaport/0");
            let e = err(with_env(&[("TASKGATE_REDIS_URL", &bad)]));
            assert!(e.contains("not a usable Redis URL"), "{e}");
            assert!(!e.contains(REDIS_PASSWORD), "{e}");
        }
    }

    #[test]
    fn webhook_secret_turns_the_route_on_and_empty_leaves_it_off() {
        let cfg = with_env(&[("TASKGATE_WEBHOOK_SECRET", WEBHOOK)]).unwrap();
        assert_eq!(cfg.webhook_secret.unwrap().expose(), WEBHOOK);
        let cfg = with_env(&[("TASKGATE_WEBHOOK_SECRET", "")]).unwrap();
        assert!(cfg.webhook_secret.is_none());
    }

    #[test]
    fn key_file_is_read_and_its_trailing_newline_trimmed() {
        let dir = TempDir::new();
        let path = dir.file("key", &format!("{KEY}\r\n\n"));
        let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", path.to_str().unwrap())]);
        let cfg = build(&Cli::default(), &env, None).unwrap();
        assert_eq!(cfg.api_key.expose(), KEY);
    }

    #[test]
    fn key_file_may_come_from_the_file_or_a_flag() {
        let dir = TempDir::new();
        let path = dir.file("key", KEY);
        let path = path.to_str().unwrap();
        let cfg = build(
            &Cli::default(),
            &Env::default(),
            Some(&file(&format!("api_key_file = \"{path}\""))),
        );
        assert_eq!(cfg.unwrap().api_key.expose(), KEY);
        let cli = Cli {
            api_key_file: Some(path.into()),
            ..Cli::default()
        };
        assert_eq!(
            build(&cli, &Env::default(), None).unwrap().api_key.expose(),
            KEY
        );
    }

    #[test]
    fn a_higher_layer_key_wins_and_an_overridden_key_file_is_not_read() {
        let result = build(
            &Cli::default(),
            &key_env(&[]),
            Some(&file("api_key_file = \"/nonexistent/key\"")),
        );
        assert_eq!(result.unwrap().api_key.expose(), KEY);
    }

    #[test]
    fn both_key_sources_in_the_environment_is_an_error() {
        let e = err(with_env(&[("TASKGATE_API_KEY_FILE", "/run/secrets/key")]));
        assert_eq!(
            e,
            "TASKGATE_API_KEY_FILE: set together with TASKGATE_API_KEY (set only one of them)"
        );
    }

    #[test]
    fn an_unreadable_key_file_is_named_with_its_path_and_reason() {
        let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", "/nonexistent/key")]);
        let e = err(build(&Cli::default(), &env, None));
        assert!(
            e.starts_with("TASKGATE_API_KEY_FILE: cannot read \"/nonexistent/key\" (No such file"),
            "{e}"
        );
        let cli = Cli {
            api_key_file: Some("/nonexistent/key".into()),
            ..Cli::default()
        };
        assert!(err(build(&cli, &Env::default(), None)).starts_with("--api-key-file: cannot read"));
    }

    #[test]
    fn an_empty_or_huge_key_file_is_an_error() {
        let dir = TempDir::new();
        let empty = dir.file("empty", "\n");
        let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", empty.to_str().unwrap())]);
        assert!(err(build(&Cli::default(), &env, None)).ends_with("is empty"));
        let huge = dir.file("huge", &"k".repeat(20_000));
        let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", huge.to_str().unwrap())]);
        assert!(err(build(&Cli::default(), &env, None)).contains("too large"));
    }

    #[test]
    fn a_key_that_cannot_go_in_a_header_is_refused_without_printing_it() {
        for bad in [format!("{KEY} x"), format!("{KEY}\n"), format!("{KEY}é")] {
            let env = Env::from_pairs([("TASKGATE_API_KEY", bad.as_str())]);
            let e = err(build(&Cli::default(), &env, None));
            assert!(
                e.starts_with("TASKGATE_API_KEY: the key contains characters"),
                "{e}"
            );
            assert!(!e.contains(KEY), "{e}");
        }
        let env = Env::from_pairs([("TASKGATE_API_KEY", "")]);
        assert_eq!(
            err(build(&Cli::default(), &env, None)),
            "TASKGATE_API_KEY: the key is empty"
        );
        let dir = TempDir::new();
        let path = dir.file("key", &format!("  {KEY}\n"));
        let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", path.to_str().unwrap())]);
        let e = err(build(&Cli::default(), &env, None));
        assert!(e.contains("contains characters") && !e.contains(KEY), "{e}");
    }

    #[test]
    fn a_missing_key_is_an_error_unless_demo() {
        let e = err(build(&Cli::default(), &Env::default(), None));
        assert_eq!(
            e,
            "TASKGATE_API_KEY: missing (set TASKGATE_API_KEY or TASKGATE_API_KEY_FILE, \
             or run with --demo)"
        );
        let cli = Cli {
            demo: true,
            ..Cli::default()
        };
        let cfg = build(&cli, &Env::default(), None).unwrap();
        assert_eq!(cfg.api_key.expose(), crate::demo::DEMO_API_KEY);
    }

    #[test]
    fn secrets_never_appear_in_debug() {
        let url = format!("rediss://default:{REDIS_PASSWORD}@cache:6380/0");
        let cfg = with_env(&[
            ("TASKGATE_REDIS_URL", &url),
            ("TASKGATE_WEBHOOK_SECRET", WEBHOOK),
        ])
        .unwrap();
        let env = key_env(&[("TASKGATE_WEBHOOK_SECRET", WEBHOOK)]);
        for text in [
            format!("{cfg:?}"),
            format!("{cfg:#?}"),
            format!("{env:?}"),
            format!("{}", cfg.api_key),
        ] {
            for secret in [KEY, WEBHOOK, REDIS_PASSWORD] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        assert!(format!("{cfg:?}").contains("api_key: ***"));
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let errors = [
            with_env(&[("TASKGATE_REDIS_URL", &format!("{KEY}://{REDIS_PASSWORD}"))]),
            build(
                &Cli::default(),
                &Env::from_pairs([("TASKGATE_API_KEY", format!("{KEY} "))]),
                None,
            ),
            with_env(&[("TASKGATE_API_KEY_FILE", KEY)]),
            with_file(&format!("api_key = \"{KEY}\"")),
            with_file(&format!("webhook_secret = [\"{WEBHOOK}\"]")),
            with_file(&format!("redis_url = \"{REDIS_PASSWORD}\"")),
            with_env(&[("TASKGATE_UPSTREAM_URL", &format!("https://u:{KEY}@x"))]),
        ];
        for result in errors {
            let e = err(result);
            for secret in [KEY, WEBHOOK, REDIS_PASSWORD] {
                assert!(!e.contains(secret), "{secret} in {e}");
            }
        }
    }
}
