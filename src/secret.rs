//! Secrets: values whose `Debug` and `Display` print `***`.
// Until the configuration split lands, the type lives with the configuration.
pub use crate::config::{ApiKey, Secret};
