//! Built-in simulated Studio task API for `taskgate --demo`. (stub: being written)

/// The placeholder key `--demo` injects; the simulator accepts only this one.
pub const DEMO_API_KEY: &str = "demo-key-not-a-secret";
