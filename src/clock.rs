//! Wall-clock time as the API and Redis speak it: unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch (0 for a clock set before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// [`unix_ms`] of now.
pub fn unix_ms_now() -> u64 {
    unix_ms(SystemTime::now())
}
