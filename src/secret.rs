//! Values that must never be printed: the API key, webhook secrets, a Redis URL that can hold a
//! password.
//!
//! Guarantees: `Debug` and `Display` print `***`; only [`Secret::expose`] reveals the value, so
//! every place that uses it is greppable. A leaf: this module imports nothing from the crate.

use std::{fmt, sync::Arc};

/// A value that must never be printed. Cloning is cheap (shared).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret} {secret:#?}"), "*** *** ***");
        assert_eq!(secret.expose(), "hunter2");
    }
}
