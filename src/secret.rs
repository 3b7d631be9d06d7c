//! Values that must never be printed: the API key, webhook secrets, a Redis URL that can hold a
//! password.
//!
//! Guarantees: `Debug` and `Display` print `***`; only [`Secret::expose`] reveals the value, so
//! every place that uses it is greppable. A leaf: this module imports nothing from the crate.
//! [`same`] compares a given value with a secret in constant time.

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

/// Whether `given` equals `expected`, in time that depends on neither's content (both are
/// hashed first, so not even the length of the secret leaks through timing).
pub fn same(given: &str, expected: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, given.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
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

    #[test]
    fn same_compares_whole_values() {
        assert!(same("tok", "tok"));
        assert!(!same("tok", "tok2"));
        assert!(!same("", "tok"));
    }
}
