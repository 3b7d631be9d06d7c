//! [`ConfigError`]: one line naming the setting as the user wrote it.

use std::fmt;

/// A bad configuration: the setting as the user wrote it (`TASKGATE_LISTEN`, `--listen`,
/// `listen in config/taskgate.toml`) and what is wrong with it. Displays as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    setting: String,
    problem: String,
}

impl ConfigError {
    pub(crate) fn new(setting: impl fmt::Display, problem: impl Into<String>) -> Self {
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
