//! Studio webhooks (`POST /webhooks/livepeer`), as LIVEPEER-API.md §8 describes them.
//!
//! Studio signs each call with `Livepeer-Signature: t=<ms>,v1=<hex HMAC-SHA256 of the raw
//! body>`. A call is acted on only when a `v1` matches (compared in constant time), its `t`
//! is within five minutes of now, and its event id was not seen before (retries of one event
//! keep the id). Events about a resource name the key whose cached answer must be dropped.

use std::time::Duration;

use ring::hmac;
use serde::Deserialize;

use crate::{
    resource::{Key, Kind},
    secret::Secret,
};

/// Largest body accepted; Studio's task events are a few KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Calls signed longer ago than this (or this far in the future) are refused.
pub const FRESHNESS: Duration = Duration::from_secs(5 * 60);

/// What became of one call: the metric label and the log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An event about a resource: its cached answer is dropped and its watchers refreshed.
    Accepted,
    BadSignature,
    Stale,
    /// The event id was seen before (Studio retries).
    Duplicate,
    /// Signed and fresh, but not about a resource (or not understood): acknowledged.
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::BadSignature => "bad_signature",
            Outcome::Stale => "stale",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
        }
    }
}

pub struct Webhooks {
    key: hmac::Key,
    /// Event ids already handled, remembered a little longer than the freshness window.
    seen: moka::sync::Cache<String, ()>,
}

impl Webhooks {
    pub fn new(secret: &Secret) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
            seen: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FRESHNESS * 2)
                .build(),
        }
    }

    /// Checks one call. On `Accepted`, also returns the key to invalidate.
    pub fn receive(
        &self,
        signature: Option<&[u8]>,
        body: &[u8],
        now_ms: u64,
    ) -> (Outcome, Option<Key>) {
        let Some((t, tags)) = signature.and_then(parse_signature) else {
            return (Outcome::BadSignature, None);
        };
        // Every v1 is checked (Studio may send more than one while rotating secrets).
        if !tags
            .iter()
            .any(|tag| hmac::verify(&self.key, body, tag).is_ok())
        {
            return (Outcome::BadSignature, None);
        }
        if now_ms.abs_diff(t) > FRESHNESS.as_millis() as u64 {
            return (Outcome::Stale, None);
        }
        #[derive(Deserialize)]
        struct Call {
            id: Option<String>,
            event: Option<String>,
            payload: Option<Payload>,
        }
        #[derive(Deserialize)]
        struct Payload {
            task: Option<Named>,
        }
        #[derive(Deserialize)]
        struct Named {
            id: Option<String>,
        }
        impl Payload {
            /// `payload.{kind}.id`.
            fn id_of(self, kind: Kind) -> Option<String> {
                match kind {
                    Kind::Task => self.task?.id,
                }
            }
        }
        let Ok(call) = serde_json::from_slice::<Call>(body) else {
            return (Outcome::Ignored, None);
        };
        if let Some(event_id) = &call.id {
            if self.seen.contains_key(event_id) {
                return (Outcome::Duplicate, None);
            }
            self.seen.insert(event_id.clone(), ());
        }
        let Some(event) = call.event.as_deref() else {
            return (Outcome::Ignored, None);
        };
        let changed = Kind::ALL
            .into_iter()
            .find(|kind| kind.changed_by(event))
            .and_then(|kind| {
                let id = call.payload?.id_of(kind)?;
                Key::new(kind, &id)
            });
        match changed {
            Some(key) => (Outcome::Accepted, Some(key)),
            None => (Outcome::Ignored, None),
        }
    }
}

/// `t=<ms>,v1=<hex>[,v1=<hex>…]` → the time and the decoded tags.
fn parse_signature(header: &[u8]) -> Option<(u64, Vec<Vec<u8>>)> {
    let header = std::str::from_utf8(header).ok()?;
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=')? {
            ("t", v) => t = Some(v.parse().ok()?),
            ("v1", v) => tags.push(decode_hex(v)?),
            _ => {} // other schemes are not ours to judge
        }
    }
    Some((t?, tags)).filter(|(_, tags)| !tags.is_empty())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_headers_parse() {
        let (t, tags) = parse_signature(b"t=1717000000000,v1=00ff").unwrap();
        assert_eq!((t, tags), (1_717_000_000_000, vec![vec![0x00, 0xff]]));
        assert!(parse_signature(b"v1=00ff").is_none());
        assert!(parse_signature(b"t=1").is_none());
        assert!(parse_signature(b"t=x,v1=00").is_none());
        assert!(parse_signature(b"t=1,v1=0g").is_none());
        assert!(parse_signature(b"garbage").is_none());
    }
}
