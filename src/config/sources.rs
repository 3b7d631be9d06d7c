//! The layers, lowest first: built-in values < TOML file < `TASKGATE_*` environment <
//! setting flags. Each layer names its values the way the user wrote them ([`Origin`]), and
//! finds them in the table by key (file, flags) or by `TASKGATE_` + the upper-cased key.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use toml::de::{DeTable, DeValue};

use super::{
    settings::{self, Draft, Setting, SETTINGS},
    Config, ConfigError, ENV_PREFIX,
};
use crate::secret::ApiKey;

/// What the command line says about configuration. The binary parses the command line (run
/// modes are its business) and hands over the file and the setting flags.
#[derive(Debug, Default)]
pub struct Args {
    /// `--config FILE`; `None` reads [`super::DEFAULT_CONFIG_FILE`] when it exists.
    pub config: Option<PathBuf>,
    /// Setting flags as (setting key, value): the keys of [`settings::flags`].
    pub flags: Vec<(&'static str, String)>,
    /// The key used when no layer names one (`--demo`'s); `None` makes that an error.
    pub fallback_api_key: Option<ApiKey>,
}

/// [`super::load`] once the file (if any) is read: the layers are applied in order of precedence, so
/// a later value simply overwrites an earlier one.
pub(super) fn build(
    args: &Args,
    env: &Env,
    file: Option<&ConfigFile>,
) -> Result<Config, ConfigError> {
    let mut draft = Draft::builtin(ApiKey::new(""));
    if let Some(file) = file {
        file.apply(&mut draft)?;
    }
    apply_env(&mut draft, env)?;
    for (key, value) in &args.flags {
        let setting = settings::find(key)
            .ok_or_else(|| ConfigError::new(format!("--{key}"), "unknown setting"))?;
        setting.apply(&mut draft, value, &Origin::Flag(setting))?;
    }
    draft.finish(args.fallback_api_key.as_ref())
}

/// The environment variables configuration may read: `TASKGATE_*` and `RUST_LOG`. Handed to
/// [`super::load`] so tests build one with [`Env::from_pairs`] instead of mutating the process
/// environment (a data race under the parallel test runner).
#[derive(Clone, Default)]
pub struct Env {
    pub(super) vars: BTreeMap<String, String>,
    /// `TASKGATE_*` variables whose name or value is not UTF-8: an error, reported by `load`.
    pub(super) not_utf8: Vec<String>,
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

pub(super) struct ConfigFile {
    pub(super) path: PathBuf,
    pub(super) text: String,
}

impl ConfigFile {
    pub(super) fn read(path: &Path, label: &str) -> Result<Self, ConfigError> {
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
    pub(super) fn read_if_present(path: &Path) -> Result<Option<Self>, ConfigError> {
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
            let setting =
                settings::find(key).ok_or_else(|| ConfigError::new(&origin, "unknown setting"))?;
            if setting.env_only {
                return Err(ConfigError::new(
                    origin,
                    format!(
                        "not accepted in a file: set {} or {}_FILE (or {}_file here)",
                        setting.env_name(),
                        setting.env_name(),
                        setting.key
                    ),
                ));
            }
            let text = toml_value_text(setting, value.get_ref())
                .map_err(|problem| ConfigError::new(&origin, problem))?;
            setting.apply(draft, &text, &origin)?;
        }
        Ok(())
    }
}

/// A TOML value in the string form the setting's parser reads, so `max_body = 1048576` and
/// `max_body = "1MiB"` go through the same code (and a list's array becomes its comma list).
pub(super) fn toml_value_text(setting: &Setting, value: &DeValue<'_>) -> Result<String, String> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
            .map(|n| n.to_string())
            .map_err(|_| "integer out of range".to_owned()),
        DeValue::Float(x) => Ok(x.as_str().to_owned()),
        DeValue::Boolean(b) => Ok(b.to_string()),
        DeValue::Array(items) if setting.list => items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) if !s.contains(',') => Ok(s.to_string()),
                _ => Err("expected an array of strings (without commas)".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|origins| origins.join(",")),
        other => Err(format!(
            "expected a string, number or boolean, found {}",
            other.type_str()
        )),
    }
}

pub(super) fn apply_env(draft: &mut Draft, env: &Env) -> Result<(), ConfigError> {
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
            let setting = settings::find("log").expect("`log` is a row of the table");
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
pub(super) fn is_kubernetes_service_link(name: &str, value: &str) -> bool {
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
pub(super) enum Origin<'a> {
    File {
        key: String,
        path: PathBuf,
    },
    Env(&'a str),
    Flag(&'static Setting),
    /// The table's own value (whose failure to parse is a bug, not a user's error).
    Builtin,
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { key, path } => write!(f, "{key} in {}", path.display()),
            Origin::Env(name) => f.write_str(name),
            Origin::Flag(setting) => f.write_str(&setting.flag_name()),
            Origin::Builtin => f.write_str("built-in value"),
        }
    }
}
