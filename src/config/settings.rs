//! The settings table: one row per setting, and everything else derived from it.
//!
//! A row holds the file key, the built-in value, the parser, the one-line doc, and whether it
//! is also a command-line flag, a secret or a list. From it come: the defaults
//! ([`Config::new`]), the environment name (`TASKGATE_` + the key upper-cased), the flag name
//! (`--` + the key with dashes) and its `--help` line, the unknown-name check of every layer,
//! and the checks that `config/taskgate.toml` documents exactly these keys.
//!
//! Adding a setting is one row here plus its field in [`Config`] (and its placeholder in
//! `Config::blank`, which the compiler asks for).

use super::{parse::*, sources::Origin, Config, ConfigError, DEFAULT_UPSTREAM_URL, ENV_PREFIX};
use crate::secret::ApiKey;
use Builtin::{Derived, Unset, Value};

/// A setting's value when no layer sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// This text, parsed like a value given in any layer (so it is checked like one).
    Value(&'static str),
    /// No value: the setting stays unset (another setting stands in, or it is required).
    Unset,
    /// Computed from other settings once every layer is in; the phrase says how.
    Derived(&'static str),
}

/// One row of the table. See the module doc for what derives from it.
pub struct Setting {
    /// The key in the TOML file; lower case, words joined by `_`.
    pub key: &'static str,
    pub builtin: Builtin,
    /// One line: what the setting does (the `--help` text of its flag).
    pub doc: &'static str,
    /// `Some(VALUE_NAME)`: also a command-line flag, `--key-with-dashes VALUE_NAME`.
    pub flag: Option<&'static str>,
    /// Never quoted in an error, and taken byte for byte (not trimmed).
    pub secret: bool,
    /// Refused in a TOML file (the API key: files get committed, copied and printed).
    pub env_only: bool,
    /// A comma list: a TOML file may also write it as an array of strings.
    pub list: bool,
    /// Parses a value into the draft; the error is a phrase that follows the setting's name.
    parse_into: fn(&mut Draft, &str, &Origin<'_>) -> Result<(), String>,
}

impl Setting {
    const fn row(
        key: &'static str,
        builtin: Builtin,
        parse_into: fn(&mut Draft, &str, &Origin<'_>) -> Result<(), String>,
        doc: &'static str,
    ) -> Self {
        Self {
            key,
            builtin,
            doc,
            flag: None,
            secret: false,
            env_only: false,
            list: false,
            parse_into,
        }
    }

    const fn flag(mut self, value_name: &'static str) -> Self {
        self.flag = Some(value_name);
        self
    }

    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    const fn env_only(mut self) -> Self {
        self.env_only = true;
        self
    }

    const fn list(mut self) -> Self {
        self.list = true;
        self
    }

    /// `TASKGATE_TTL_COMPLETED` for `ttl_completed`.
    pub fn env_name(&self) -> String {
        format!("{ENV_PREFIX}{}", self.key.to_ascii_uppercase())
    }

    /// `--admin-listen` for `admin_listen` (whether or not it is a flag).
    pub fn flag_name(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }

    /// The `--help` line of its flag: the doc, the variable and the built-in value.
    pub fn help(&self) -> String {
        let builtin = match self.builtin {
            Value("") | Unset => String::new(),
            Value(text) | Derived(text) => format!(" [default: {text}]"),
        };
        format!("{} [env: {}]{builtin}", self.doc, self.env_name())
    }

    /// Parses `value` into the draft; a failure names the setting as `origin` says.
    pub(super) fn apply(
        &self,
        draft: &mut Draft,
        value: &str,
        origin: &Origin<'_>,
    ) -> Result<(), ConfigError> {
        // Stray spaces around a number or an address are a formatting slip, not a new value;
        // secrets are taken byte for byte.
        let value = if self.secret { value } else { value.trim() };
        (self.parse_into)(draft, value, origin).map_err(|problem| {
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

/// A row whose parser's result goes into the [`Config`] field of the same name.
macro_rules! field {
    ($field:ident, $builtin:expr, $parse:expr, $doc:literal) => {
        Setting::row(
            stringify!($field),
            $builtin,
            |draft, value, _| {
                draft.cfg.$field = $parse(value)?;
                Ok(())
            },
            $doc,
        )
    };
}

/// Every setting: the key, the built-in value, the parser, the doc line, and whether it is
/// also a flag (`.flag(VALUE_NAME)`), a secret, or refused in a file.
#[rustfmt::skip]
pub static SETTINGS: &[Setting] = &[
    Setting::row("api_key",      Unset,                       set_api_key,
        "Studio API key injected upstream").secret().env_only(),
    Setting::row("api_key_file", Unset,                       set_api_key_file,
        "Read the API key from this file (a trailing newline is trimmed)").flag("FILE"),
    field!(upstream_url,         Value(DEFAULT_UPSTREAM_URL), parse_upstream_url,
        "Studio API base URL: https, or http to loopback only").flag("URL"),
    field!(listen,               Value("127.0.0.1:8080"),     parse_addr,
        "Public listener, ip:port").flag("ADDR"),
    field!(admin_listen,         Value("127.0.0.1:9090"),     parse_addr,
        "Admin listener, ip:port").flag("ADDR"),
    field!(upstream_timeout,     Value("10s"),                parse_positive_duration,
        "Time allowed for the whole upstream exchange, headers and body"),
    field!(connect_timeout,      Value("2s"),                 parse_positive_duration,
        "Time allowed for the TCP + TLS connect"),
    field!(max_body,             Value("1MiB"),               parse_max_body,
        "Larger upstream bodies are refused (502)"),
    field!(upstream_ca_file,     Value(""),                   parse_ca_file,
        "Extra PEM root certificates trusted for the upstream, beside the usual ones"),
    field!(upstream_concurrency, Value("64"),                 parse_count,
        "Most upstream fetches in flight at once"),
    field!(cache_max_bytes,      Value("64MiB"),              parse_size,
        "Bound on the cached bodies held in memory"),
    field!(ttl_completed,        Value("24h"),                parse_duration,
        "How long a completed task is kept"),
    field!(ttl_failed,           Value("30s"),                parse_duration,
        "How long a failed or cancelled task (or a failed asset) is kept"),
    field!(ttl_asset_ready,      Value("60s"),                parse_duration,
        "How long a ready asset is kept (it can still change; a webhook drops it at once)"),
    field!(ttl_not_found,        Value("5s"),                 parse_duration,
        "Negative cache for upstream 404s; 0s turns it off"),
    field!(ttl_pending,          Value("0s"),                 parse_duration,
        "Micro-cache for unfinished tasks and assets; 0s passes every request through"),
    field!(cors_origins,         Value(""),                   parse_cors_origins,
        "Comma list of allowed origins (exact, or scheme://*.domain[:port] for any subdomain), or *; empty sends no CORS headers")
        .flag("ORIGINS").list(),
    field!(rate_limit,           Value("0"),                  parse_rate,
        "Requests per second per client address (token bucket); 0 is off"),
    Setting::row("rate_burst",   Derived("twice rate_limit, at least 1"), set_rate_burst,
        "Token bucket size: how many requests a client may make at once"),
    field!(miss_rate,            Value("20"),                 parse_rate,
        "Per-client requests per second that need the API (misses, passes); hits never spend it; 0 is off"),
    Setting::row("miss_burst",   Derived("twice miss_rate, at least 1"), set_miss_burst,
        "That bucket's size"),
    field!(trust_forwarded,      Value("false"),              parse_bool,
        "Take the client address from the last X-Forwarded-For hop"),
    field!(max_connections,      Value("10000"),              parse_count,
        "Most client connections open at once"),
    Setting::row("max_connections_per_client", Derived("max_connections / 4, at least 1"),
        set_max_connections_per_client,
        "Most connections one client address (an IPv6 /64) may hold open at once"),
    field!(header_timeout,       Value("10s"),                parse_positive_duration,
        "A client must finish sending its request headers within this"),
    field!(idle_timeout,         Value("60s"),                parse_positive_duration,
        "An idle keep-alive client connection is closed after this"),
    field!(redact,               Value("true"),               parse_bool,
        "Scrub credentials and presigned URLs from task and asset bodies"),
    field!(redis_url,            Value(""),                   parse_redis_url,
        "redis://host:port/db or rediss://...: second-level cache shared by replicas; empty is off")
        .secret(),
    field!(redis_timeout,        Value("50ms"),               parse_positive_duration,
        "A slower Redis answer counts as a miss"),
    field!(redis_namespace,      Value(""),                   parse_redis_namespace,
        "Keeps tenants sharing one Redis apart; empty derives it from the upstream URL, redaction and the API key"),
    field!(webhook_secret,       Value(""),                   parse_webhook_secret,
        "Shared secret of the Studio webhook at /webhooks/livepeer; empty turns the route off")
        .secret(),
    field!(webhook_trust_ttl,    Value("0s"),                 parse_duration,
        "With a webhook secret: cache unfinished answers until a webhook names their id, at most this long; 0s is off"),
    field!(webhook_secret_file,  Value(""),                   parse_secret_file,
        "Webhook secrets, one per line, all accepted; re-read when the file changes"),
    field!(access_secret,        Value(""),                   parse_optional_secret,
        "HS256 secret of viewer tokens; setting it (or the next two) turns viewer access on")
        .secret(),
    field!(access_secret_file,   Value(""),                   parse_secret_file,
        "HS256 secrets of viewer tokens, one per line, all accepted; re-read when the file changes"),
    field!(access_public_key_file, Value(""),                 parse_secret_file,
        "PEM public keys (ES256, EdDSA) of viewer tokens, all accepted; re-read when the file changes"),
    field!(admin_token,          Value(""),                   parse_optional_secret,
        "Bearer token of state-changing admin routes (purge); unset allows loopback peers only")
        .secret(),
    field!(admin_token_file,     Value(""),                   parse_secret_file,
        "Read the admin token from this file; re-read when it changes"),
    field!(secret_reload_interval, Value("10s"),              parse_positive_duration,
        "How often *_file secrets are checked for changes (SIGHUP re-reads them at once)"),
    field!(watch_interval,       Value("2s"),                 parse_positive_duration,
        "How often a watched unfinished task or asset is fetched"),
    field!(watch_max,            Value("1000"),               parse_count,
        "Most task and asset ids watched at once"),
    field!(watch_max_per_client, Value("32"),                 parse_count,
        "Most watch streams one client may hold open at once"),
    field!(stale_if_error,       Value("24h"),                parse_duration,
        "How long past its TTL a finished answer may still be served when the API fails; 0s is off"),
    field!(log_format,           Value("json"),               parse_log_format,
        "json or pretty").flag("FORMAT"),
    field!(log,                  Value("info"),               parse_log,
        "Log filter, RUST_LOG syntax (RUST_LOG is read when TASKGATE_LOG is unset)").flag("FILTER"),
    field!(shutdown_grace,       Value("0s"),                 parse_duration,
        "After SIGTERM, keep serving this long while readiness reports 503"),
    field!(drain_timeout,        Value("10s"),                parse_duration,
        "Then wait this long for in-flight requests"),
];

/// A bucket's size when none is set: twice its rate, and at least one token (a smaller bucket
/// would refuse every request); 0 for a bucket that is off.
pub fn default_burst(rate: f64) -> f64 {
    if rate > 0.0 {
        (2.0 * rate).max(1.0)
    } else {
        0.0
    }
}

/// The row whose file key is `key`.
pub fn find(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The settings that are also command-line flags, in table order. The binary turns each into
/// a flag named [`Setting::flag_name`] with [`Setting::help`], and hands the values back in
/// [`super::Args::flags`] under [`Setting::key`].
pub fn flags() -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().filter(|s| s.flag.is_some())
}

fn set_api_key(draft: &mut Draft, value: &str, origin: &Origin<'_>) -> Result<(), String> {
    let key = parse_api_key(value).map_err(|problem| format!("the key {problem}"))?;
    draft.key = Some((KeySource::Inline(key), origin.to_string()));
    Ok(())
}

/// Unset, the bucket is derived from the rate once every layer is in (see [`Draft::derive`]).
fn set_rate_burst(draft: &mut Draft, value: &str, _: &Origin<'_>) -> Result<(), String> {
    draft.rate_burst = Some(parse_burst(value)?);
    Ok(())
}

/// Unset, the bucket is derived from the miss rate once every layer is in.
fn set_miss_burst(draft: &mut Draft, value: &str, _: &Origin<'_>) -> Result<(), String> {
    draft.miss_burst = Some(parse_burst(value)?);
    Ok(())
}

/// Unset, a quarter of `max_connections` once every layer is in.
fn set_max_connections_per_client(
    draft: &mut Draft,
    value: &str,
    _: &Origin<'_>,
) -> Result<(), String> {
    draft.max_connections_per_client = Some(parse_count(value)?);
    Ok(())
}

fn set_api_key_file(draft: &mut Draft, value: &str, origin: &Origin<'_>) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty (write the path of a file holding the key)".into());
    }
    draft.key = Some((KeySource::File(value.into()), origin.to_string()));
    Ok(())
}

/// The configuration being built, plus what can only be settled once every layer is in.
pub(super) struct Draft {
    pub(super) cfg: Config,
    /// Unset means "twice the rate", whatever layer sets the rate.
    rate_burst: Option<f64>,
    miss_burst: Option<f64>,
    max_connections_per_client: Option<usize>,
    /// The highest layer's key source, and where it was named (for errors when reading it).
    key: Option<(KeySource, String)>,
}

enum KeySource {
    Inline(ApiKey),
    /// Read only at the end, so a key file named by a lower layer and overridden is not read.
    File(std::path::PathBuf),
}

const MISSING_KEY: &str =
    "missing (set TASKGATE_API_KEY or TASKGATE_API_KEY_FILE, or run with --demo)";

impl Draft {
    /// Every row's built-in value, parsed by the row's own parser.
    pub(super) fn builtin(api_key: ApiKey) -> Self {
        let mut draft = Draft {
            cfg: Config::blank(api_key),
            rate_burst: None,
            miss_burst: None,
            max_connections_per_client: None,
            key: None,
        };
        for setting in SETTINGS {
            if let Value(text) = setting.builtin {
                setting
                    .apply(&mut draft, text, &Origin::Builtin)
                    .unwrap_or_else(|e| {
                        panic!("the built-in value of {} parses: {e}", setting.key)
                    });
            }
        }
        draft.derive();
        draft
    }

    /// The [`Derived`] values, from what the layers set.
    fn derive(&mut self) {
        self.cfg.rate_burst = self
            .rate_burst
            .unwrap_or_else(|| default_burst(self.cfg.rate_limit));
        self.cfg.miss_burst = self
            .miss_burst
            .unwrap_or_else(|| default_burst(self.cfg.miss_rate));
        self.cfg.max_connections_per_client = self
            .max_connections_per_client
            .unwrap_or(self.cfg.max_connections / 4)
            .max(1);
    }

    /// The configuration, once every layer is in. The key file is read here; `fallback_key`
    /// is used when no layer names a key (the binary's `--demo`), else that is an error.
    pub(super) fn finish(mut self, fallback_key: Option<&ApiKey>) -> Result<Config, ConfigError> {
        self.derive();
        // A secret and its file: neither wins, the operator must choose.
        let cfg = &self.cfg;
        for (both, name) in [
            (
                cfg.webhook_secret.is_some() && cfg.webhook_secret_file.is_some(),
                "TASKGATE_WEBHOOK_SECRET",
            ),
            (
                cfg.access_secret.is_some() && cfg.access_secret_file.is_some(),
                "TASKGATE_ACCESS_SECRET",
            ),
            (
                cfg.admin_token.is_some() && cfg.admin_token_file.is_some(),
                "TASKGATE_ADMIN_TOKEN",
            ),
        ] {
            if both {
                return Err(ConfigError::new(
                    format!("{name}_FILE"),
                    format!("set together with {name} (set only one of them)"),
                ));
            }
        }
        self.cfg.api_key = match self.key {
            Some((KeySource::Inline(key), _)) => key,
            Some((KeySource::File(path), origin)) => {
                let key =
                    read_key_file(&path).map_err(|problem| ConfigError::new(origin, problem))?;
                self.cfg.api_key_file = Some(path);
                key
            }
            None => match fallback_key {
                Some(key) => key.clone(),
                None => return Err(ConfigError::new("TASKGATE_API_KEY", MISSING_KEY)),
            },
        };
        Ok(self.cfg)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use toml::de::DeTable;

    use super::*;
    use crate::config::{
        sources::{is_kubernetes_service_link, toml_value_text},
        DEFAULT_CONFIG_FILE,
    };

    /// The `key = value` lines of the shipped file, commented out or not, as (key, value
    /// text); found the way `.ci/deploy-check` finds them.
    fn documented() -> Vec<(String, String)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let text = std::fs::read_to_string(path).expect("config/taskgate.toml is readable");
        text.lines()
            .filter_map(|line| {
                let line = line.strip_prefix('#').unwrap_or(line).trim_start();
                let (key, value) = line.split_once('=')?;
                let key = key.trim_end();
                let is_key = key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key
                        .bytes()
                        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
                is_key.then(|| (key.to_owned(), value.trim().to_owned()))
            })
            .collect()
    }

    /// A TOML value as the setting's parser reads it (`64` and `"64"` alike).
    fn value_text(setting: &Setting, value: &str) -> String {
        let line = format!("v = {value}");
        let parsed = DeTable::parse(&line)
            .unwrap_or_else(|e| panic!("{} = {value} is not TOML: {e}", setting.key));
        let text = toml_value_text(setting, parsed.get_ref()["v"].get_ref());
        text.unwrap_or_else(|e| panic!("{} = {value}: {e}", setting.key))
    }

    #[test]
    fn the_shipped_file_documents_each_setting_at_its_built_in_value_and_nothing_else() {
        let lines = documented();
        for (key, value) in &lines {
            let setting = find(key).unwrap_or_else(|| panic!("{key} in the file is not a setting"));
            assert!(
                !setting.env_only,
                "{key} is refused in a file, yet the file shows it"
            );
            value_text(setting, value);
        }
        for setting in SETTINGS.iter().filter(|s| !s.env_only) {
            let shown: Vec<String> = lines
                .iter()
                .filter(|(key, _)| key == setting.key)
                .map(|(_, value)| value_text(setting, value))
                .collect();
            assert!(!shown.is_empty(), "{} is not in the file", setting.key);
            if let Value(builtin) = setting.builtin {
                assert!(
                    shown.iter().any(|v| v == builtin),
                    "the file does not show {} = {builtin:?} (it shows {shown:?})",
                    setting.key
                );
            }
        }
    }

    /// The rules `.ci/deploy-check` relies on when it maps `TASKGATE_*` names in deploy/ to the
    /// keys of config/taskgate.toml.
    #[test]
    fn setting_names_follow_the_rules_deploy_check_relies_on() {
        let mut keys = BTreeSet::new();
        for s in SETTINGS {
            assert!(keys.insert(s.key), "{} is in the table twice", s.key);
            // A file key: lower case, digits and single inner underscores.
            assert!(
                s.key.starts_with(|c: char| c.is_ascii_lowercase())
                    && !s.key.ends_with('_')
                    && !s.key.contains("__")
                    && s.key
                        .bytes()
                        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_')),
                "{} is not a lower_snake_case key",
                s.key
            );
            // `TASKGATE_` + the key upper-cased, and back.
            let env = s.env_name();
            assert_eq!(env, format!("TASKGATE_{}", s.key.to_ascii_uppercase()));
            assert_eq!(env["TASKGATE_".len()..].to_ascii_lowercase(), s.key);
            assert!(
                env.bytes()
                    .all(|b| matches!(b, b'A'..=b'Z' | b'0'..=b'9' | b'_')),
                "{env}"
            );
            // Never mistaken for (or taken for) a Kubernetes service link.
            assert!(
                !is_kubernetes_service_link(&env, "tcp://10.0.0.1:80"),
                "{env} looks like a Kubernetes service link"
            );
            assert_eq!(s.flag_name(), format!("--{}", s.key.replace('_', "-")));
        }
        // Only the key itself is environment-only (deploy-check's ENV_ONLY).
        let env_only: Vec<&str> = SETTINGS
            .iter()
            .filter(|s| s.env_only)
            .map(|s| s.key)
            .collect();
        assert_eq!(env_only, ["api_key"]);
        // deploy-check's stop-budget arithmetic assumes these built-in values.
        assert_eq!(find("shutdown_grace").unwrap().builtin, Value("0s"));
        assert_eq!(find("drain_timeout").unwrap().builtin, Value("10s"));
    }

    #[test]
    fn flags_are_never_secrets_and_never_clash_with_the_binarys_own() {
        for s in flags() {
            assert!(!s.secret, "{}: a flag shows in ps to every user", s.key);
            assert!(
                ![
                    "config",
                    "check_config",
                    "healthcheck",
                    "demo",
                    "help",
                    "version"
                ]
                .contains(&s.key),
                "{} is a flag of the binary",
                s.key
            );
            assert!(s.help().contains(&s.env_name()), "{}", s.help());
        }
    }

    #[test]
    fn every_built_in_value_parses_with_its_own_parser() {
        for s in SETTINGS {
            if let Value(text) = s.builtin {
                let mut draft = Draft::builtin(ApiKey::new("k"));
                s.apply(&mut draft, text, &Origin::Builtin)
                    .unwrap_or_else(|e| panic!("{}: {e}", s.key));
            }
        }
    }

    /// Each `Config` field (its `Debug` lists them) is a row of the table, so none keeps a
    /// placeholder of `Config::blank` for its default.
    #[test]
    fn every_config_field_is_a_row_and_every_row_a_field() {
        let debug = format!("{:#?}", Config::new(ApiKey::new("k"), DEFAULT_UPSTREAM_URL));
        let fields: BTreeSet<&str> = debug
            .lines()
            .filter_map(|l| l.strip_prefix("    ")?.split_once(": ").map(|(f, _)| f))
            .filter(|f| !f.starts_with(' '))
            .collect();
        let rows: BTreeSet<&str> = SETTINGS.iter().map(|s| s.key).collect();
        let not_fields: Vec<&&str> = rows.difference(&fields).collect();
        let not_rows: Vec<&&str> = fields.difference(&rows).collect();
        assert_eq!(not_rows, Vec::<&&str>::new(), "Config fields without a row");
        assert_eq!(
            not_fields,
            Vec::<&&str>::new(),
            "rows without a Config field"
        );
    }
}
