//! Studio webhooks (`POST /webhooks/livepeer`); docs/push.md describes the route.
//!
//! Studio signs each call with `Livepeer-Signature: t=<ms>,v1=<hex HMAC-SHA256 of the raw
//! body>`; the body is `{id, webhookId, createdAt, timestamp, event, payload}`, where
//! `timestamp` is the send time (equal to `t`, re-set on each retry) and `createdAt` the
//! event's own time. A call is checked in an order that keeps a refusal cheap:
//!
//! 1. the header, before any hashing: exactly one `t` (digits only) within five minutes of
//!    now, and one to [`MAX_TAGS`] `v1` tags of exactly 64 hex digits — anything else is a bad
//!    signature;
//! 2. the signature: one HMAC of the body per configured secret (never one per tag),
//!    compared in constant time with each tag;
//! 3. freshness from what is signed: the body's `timestamp` must equal `t` (so a body signed
//!    long ago cannot be replayed under a rewritten `t`);
//! 4. the event id: a non-empty string of at most [`MAX_EVENT_ID`] bytes, else refused;
//! 5. deduplication: an id seen in the last [`SEEN_TTL`] is acknowledged and ignored. This
//!    table is the replica's own; with Redis, the caller also claims the id there
//!    ([`Changed::event_id`]), so a retry that lands on another replica is a duplicate too.
//!
//! Events about a resource name the key whose cached answer must be dropped.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use ring::hmac;
use serde_json::Value;

use crate::{
    resource::{Key, Kind},
    secret::Secret,
};

/// Largest body accepted; Studio's task events are a few KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Calls signed longer ago than this (or this far in the future) are refused.
pub const FRESHNESS: Duration = Duration::from_secs(5 * 60);
/// Most `v1` tags a signature header may carry; with more it is refused without hashing.
/// Studio sends one.
pub const MAX_TAGS: usize = 8;
/// Most comma-separated parts a signature header may have (`t`, the tags, other schemes).
const MAX_PARTS: usize = 2 * MAX_TAGS;
/// Longest event id accepted (Studio's are 36-byte UUIDs).
pub const MAX_EVENT_ID: usize = 128;
/// How long a handled event id is remembered: twice the freshness window, so a retry that
/// is still fresh always finds it.
pub const SEEN_TTL: Duration = FRESHNESS.saturating_mul(2);
/// Bound of the seen-ids table, in bytes (ids plus [`SEEN_ENTRY_OVERHEAD`] each).
pub const SEEN_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// What one remembered id costs beyond its own bytes (the table's node, key and links).
pub const SEEN_ENTRY_OVERHEAD: u32 = 128;
/// Length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// How long after a status write Studio may create the event about it: an event without a
/// snapshot announces its `createdAt` less this.
pub const EVENT_AFTER_WRITE: Duration = Duration::from_secs(5);

/// A resource a webhook says changed, and the version (`status.updatedAt`, unix ms) it
/// announces when the event carries one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub key: Key,
    pub version: Option<u64>,
    /// The event's id, first seen by this replica: to be claimed fleet-wide as well.
    pub event_id: Box<str>,
}

/// What became of one call: the metric label and the log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An event about a resource: its cached answer is dropped and its watchers refreshed.
    Accepted,
    /// No header, a malformed header, or no tag matches under any secret.
    BadSignature,
    /// `t` outside the window, or the signed body's `timestamp` missing or not equal to `t`.
    Stale,
    /// Signed and fresh, but the event has no usable `id` (missing, not a string, empty or
    /// longer than [`MAX_EVENT_ID`]): it could not be deduplicated, so it is refused.
    BadEventId,
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
            Outcome::BadEventId => "bad_event_id",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
        }
    }
}

pub struct Webhooks {
    /// One key per configured secret (several during a rotation); each costs one HMAC per
    /// call that passes the header checks.
    /// Swapped whole by [`Webhooks::set_secrets`] when the secret file is re-read.
    keys: std::sync::RwLock<std::sync::Arc<Vec<hmac::Key>>>,
    /// Event ids already handled, bounded in bytes, remembered for [`SEEN_TTL`].
    seen: moka::sync::Cache<String, ()>,
    /// HMACs computed so far: the work a caller can make taskgate do.
    hmacs: AtomicU64,
    /// When the last event about a resource was accepted (unix ms; 0: none yet).
    last_accepted_ms: AtomicU64,
}

impl Webhooks {
    /// Accepts calls signed with any of `secrets`.
    pub fn new(secrets: &[Secret]) -> Self {
        Self {
            keys: std::sync::RwLock::new(std::sync::Arc::new(hmac_keys(secrets))),
            seen: moka::sync::Cache::builder()
                .max_capacity(SEEN_MAX_BYTES)
                .weigher(|id: &String, _: &()| seen_weight(id))
                // The newest ids are the ones retries will name: under pressure, forget the
                // oldest rather than refuse to remember a new one.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_live(SEEN_TTL)
                .build(),
            hmacs: AtomicU64::new(0),
            last_accepted_ms: AtomicU64::new(0),
        }
    }

    /// When the last event about a resource was accepted (unix ms), if one was.
    pub fn last_accepted_ms(&self) -> Option<u64> {
        Some(self.last_accepted_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// From now on, accepts calls signed with any of `secrets` (and no other): a rotation.
    pub fn set_secrets(&self, secrets: &[Secret]) {
        *self.keys.write().expect("never poisoned") = std::sync::Arc::new(hmac_keys(secrets));
    }

    /// Accepts calls signed with `secret`.
    #[cfg(test)]
    pub fn single(secret: &Secret) -> Self {
        Self::new(std::slice::from_ref(secret))
    }

    /// How many HMACs have been computed: at most one per secret per call.
    #[cfg(test)]
    fn hmacs_computed(&self) -> u64 {
        self.hmacs.load(Ordering::Relaxed)
    }

    /// The checks that need only the head (step 1): a call that fails them is refused before
    /// its body is read, so a client without the secret cannot hold a connection open by
    /// announcing a body it never sends.
    pub fn check_header(
        &self,
        signature: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<SignedHeader, Outcome> {
        let signature = signature
            .and_then(Signature::parse)
            .ok_or(Outcome::BadSignature)?;
        if now_ms.abs_diff(signature.t) > FRESHNESS.as_millis() as u64 {
            return Err(Outcome::Stale);
        }
        Ok(SignedHeader(signature))
    }

    /// Checks the rest of a call whose head passed [`Webhooks::check_header`] (step 1). On
    /// `Accepted`, also returns what changed.
    pub fn receive(
        &self,
        header: &SignedHeader,
        body: &[u8],
        now_ms: u64,
    ) -> (Outcome, Option<Changed>) {
        let signature = &header.0;
        // 2. One HMAC per secret, compared with each (few, well-formed) tag.
        if !self.verify(body, &signature.tags) {
            return (Outcome::BadSignature, None);
        }
        // 3. Freshness from what is signed. A body that is not JSON has no signed time.
        let Ok(call) = serde_json::from_slice::<Value>(body) else {
            return (Outcome::Stale, None);
        };
        if call.get("timestamp").and_then(Value::as_u64) != Some(signature.t) {
            return (Outcome::Stale, None);
        }
        // 4. The event id, without which a retry could not be told from a new event.
        let Some(event_id) = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= MAX_EVENT_ID)
        else {
            return (Outcome::BadEventId, None);
        };
        // 5. First sight only (atomic: of two concurrent deliveries, one is fresh).
        if !self
            .seen
            .entry(event_id.to_owned())
            .or_insert(())
            .is_fresh()
        {
            return (Outcome::Duplicate, None);
        }
        let Some(event) = call.get("event").and_then(Value::as_str) else {
            return (Outcome::Ignored, None);
        };
        let changed = Kind::ALL
            .into_iter()
            .find(|kind| kind.changed_by(event))
            .and_then(|kind| {
                // `payload.{kind}`: `payload.task`, `payload.asset`.
                let named = call.get("payload")?.get(kind.as_str())?;
                let key = Key::new(kind, named.get("id")?.as_str()?)?;
                // The version the event announces: the snapshot's `status.updatedAt`, else
                // the event's own time (never `timestamp`, the send time of this delivery)
                // less the moment between the status write and the event it caused.
                let version = named
                    .pointer("/snapshot/status/updatedAt")
                    .and_then(Value::as_u64)
                    .or_else(|| {
                        let created = call.get("createdAt").and_then(Value::as_u64)?;
                        Some(created.saturating_sub(EVENT_AFTER_WRITE.as_millis() as u64))
                    });
                Some(Changed {
                    key,
                    version,
                    event_id: event_id.into(),
                })
            });
        match changed {
            Some(changed) => {
                self.last_accepted_ms.store(now_ms, Ordering::Relaxed);
                (Outcome::Accepted, Some(changed))
            }
            None => (Outcome::Ignored, None),
        }
    }

    /// Whether any tag is the body's HMAC under any secret. Computes exactly one HMAC per
    /// secret, whatever the number of tags.
    fn verify(&self, body: &[u8], tags: &[[u8; TAG_LEN]]) -> bool {
        let mut matched = false;
        let keys = std::sync::Arc::clone(&self.keys.read().expect("never poisoned"));
        for key in keys.iter() {
            let mac = hmac::sign(key, body);
            self.hmacs.fetch_add(1, Ordering::Relaxed);
            for tag in tags {
                // No early exit: every comparison runs in full.
                matched |= constant_time_eq(tag, mac.as_ref());
            }
        }
        matched
    }

    /// Bytes the seen-ids table weighs now (after its pending work is done).
    #[cfg(test)]
    fn seen_bytes(&self) -> u64 {
        self.seen.run_pending_tasks();
        self.seen.weighted_size()
    }
}

fn hmac_keys(secrets: &[Secret]) -> Vec<hmac::Key> {
    secrets
        .iter()
        .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose().as_bytes()))
        .collect()
}

/// What one remembered id weighs in the seen-ids table.
fn seen_weight(id: &str) -> u32 {
    u32::try_from(id.len())
        .unwrap_or(u32::MAX)
        .saturating_add(SEEN_ENTRY_OVERHEAD)
}

/// A well-formed `Livepeer-Signature`.
/// A `Livepeer-Signature` header that is well-formed and fresh: the only way into
/// [`Webhooks::receive`].
#[derive(Debug)]
pub struct SignedHeader(Signature);

#[derive(Debug, PartialEq, Eq)]
struct Signature {
    /// Studio's send time, unix ms.
    t: u64,
    /// One to [`MAX_TAGS`] decoded `v1` tags.
    tags: Vec<[u8; TAG_LEN]>,
}

impl Signature {
    /// `t=<ms>,v1=<64 hex>[,v1=<64 hex>…]`, strictly: one `t` of digits only, one to
    /// [`MAX_TAGS`] tags of exactly 64 hex digits, at most [`MAX_PARTS`] parts in all
    /// (parts of other schemes are skipped). Anything else is `None`; the work done is
    /// bounded whatever the header holds.
    fn parse(header: &[u8]) -> Option<Self> {
        let header = std::str::from_utf8(header).ok()?;
        let mut t = None;
        let mut tags = Vec::new();
        for (n, part) in header.split(',').enumerate() {
            if n == MAX_PARTS {
                return None;
            }
            match part.trim().split_once('=')? {
                ("t", v) if t.is_none() => t = Some(parse_ms(v)?),
                ("t", _) => return None,
                ("v1", _) if tags.len() == MAX_TAGS => return None,
                ("v1", v) => tags.push(decode_tag(v)?),
                _ => {} // other schemes are not ours to judge
            }
        }
        let t = t?;
        (!tags.is_empty()).then_some(Self { t, tags })
    }
}

/// Unix milliseconds: ASCII digits only (no sign, no space), at most 19 of them.
fn parse_ms(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Exactly 64 hex digits (either case) → the 32 bytes of an HMAC-SHA256 tag.
fn decode_tag(v: &str) -> Option<[u8; TAG_LEN]> {
    let v = v.as_bytes();
    if v.len() != 2 * TAG_LEN {
        return None;
    }
    let mut tag = [0; TAG_LEN];
    for (byte, pair) in tag.iter_mut().zip(v.chunks_exact(2)) {
        *byte = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(tag)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `a == b`, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_unit";
    const TASK: &str = "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e";
    const NOW: u64 = 1_717_000_000_000;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(secret: &str, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        hex(hmac::sign(&key, body).as_ref())
    }

    fn body(id: &str, timestamp: u64) -> String {
        format!(
            r#"{{"id":"{id}","webhookId":"wh1","createdAt":{timestamp},"timestamp":{timestamp},"event":"task.updated","payload":{{"task":{{"id":"{TASK}"}}}}}}"#
        )
    }

    fn hooks() -> Webhooks {
        Webhooks::single(&Secret::new(SECRET))
    }

    /// A whole call as the route makes it: the head-only check, then the rest.
    fn call(
        hooks: &Webhooks,
        signature: Option<&[u8]>,
        body: &[u8],
        now_ms: u64,
    ) -> (Outcome, Option<Changed>) {
        match hooks.check_header(signature, now_ms) {
            Ok(header) => hooks.receive(&header, body, now_ms),
            Err(refused) => (refused, None),
        }
    }

    #[test]
    fn signature_headers_parse_strictly() {
        let tag = "00ff".repeat(16);
        let s = Signature::parse(format!("t=1717000000000,v1={tag}").as_bytes()).unwrap();
        assert_eq!(s.t, 1_717_000_000_000);
        let want: [u8; TAG_LEN] = [0x00, 0xff].repeat(16).try_into().unwrap();
        assert_eq!(s.tags, vec![want]);
        // Either case, spaces around parts, other schemes skipped.
        let upper = "00FF".repeat(16);
        assert!(Signature::parse(format!("t=1, v1={upper}, v0=zz").as_bytes()).is_some());
        for bad in [
            format!("v1={tag}"),
            "t=1".to_owned(),
            format!("t=x,v1={tag}"),
            format!("t=+1,v1={tag}"),
            format!("t= 1,v1={tag}"),
            format!("t=,v1={tag}"),
            format!("t=99999999999999999999,v1={tag}"),
            // 20 digits, even when the value would fit: the length bound holds by itself.
            format!("t=00000000000000000001,v1={tag}"),
            format!("t=1,t=2,v1={tag}"),
            "t=1,v1=00ff".to_owned(),
            "t=1,v1=".to_owned(),
            format!("t=1,v1={}g", &tag[1..]),
            format!("t=1,v1={tag}0"),
            format!("t=1,v1={tag},v1="),
            "garbage".to_owned(),
        ] {
            assert!(Signature::parse(bad.as_bytes()).is_none(), "{bad}");
        }
        // 19 digits are the most a `t` may have.
        let s = Signature::parse(format!("t=0000000000000000001,v1={tag}").as_bytes()).unwrap();
        assert_eq!(s.t, 1);
        // At most MAX_TAGS tags, and MAX_PARTS parts in all.
        let tags = |n: usize| vec![format!("v1={tag}"); n].join(",");
        assert!(Signature::parse(format!("t=1,{}", tags(MAX_TAGS)).as_bytes()).is_some());
        assert!(Signature::parse(format!("t=1,{}", tags(MAX_TAGS + 1)).as_bytes()).is_none());
        let others = vec!["x=1"; MAX_PARTS].join(",");
        assert!(Signature::parse(format!("t=1,v1={tag},{others}").as_bytes()).is_none());
    }

    #[test]
    fn the_announced_version_is_the_snapshots_else_the_events_own_time() {
        let hooks = hooks();
        let with_snapshot = format!(
            r#"{{"id":"v1","createdAt":5,"timestamp":{NOW},"event":"task.updated","payload":{{"task":{{"id":"{TASK}","snapshot":{{"status":{{"updatedAt":7}}}}}}}}}}"#
        );
        let without = format!(
            r#"{{"id":"v2","createdAt":5,"timestamp":{NOW},"event":"task.updated","payload":{{"task":{{"id":"{TASK}"}}}}}}"#
        );
        let created = 10_000 + EVENT_AFTER_WRITE.as_millis() as u64;
        let without = without.replace(r#""createdAt":5"#, &format!(r#""createdAt":{created}"#));
        for (body, want) in [(with_snapshot, 7), (without, 10_000)] {
            let sig = format!("t={NOW},v1={}", mac(SECRET, body.as_bytes()));
            let (_, changed) = call(&hooks, Some(sig.as_bytes()), body.as_bytes(), NOW);
            assert_eq!(
                changed.and_then(|c| c.version),
                Some(want),
                "never `timestamp`"
            );
        }
        assert_eq!(hooks.last_accepted_ms(), Some(NOW));
    }

    #[test]
    fn a_signed_fresh_event_is_accepted_once() {
        let hooks = hooks();
        let b = body("ev-1", NOW);
        let sig = format!("t={NOW},v1={}", mac(SECRET, b.as_bytes()));
        let (outcome, key) = call(&hooks, Some(sig.as_bytes()), b.as_bytes(), NOW + 1000);
        assert_eq!(outcome, Outcome::Accepted);
        assert_eq!(key.map(|c| c.key), Key::new(Kind::Task, TASK));
        // A retry: same id, new send time, re-signed.
        let later = NOW + 30_000;
        let retry = b.replace(
            &format!(r#""timestamp":{NOW}"#),
            &format!(r#""timestamp":{later}"#),
        );
        let sig = format!("t={later},v1={}", mac(SECRET, retry.as_bytes()));
        let got = call(&hooks, Some(sig.as_bytes()), retry.as_bytes(), later);
        assert_eq!(got, (Outcome::Duplicate, None));
        assert_eq!(hooks.hmacs_computed(), 2);
    }

    /// Issue 16 finding 2: the work a call can cause is one HMAC per secret, never one per
    /// tag, and none for a header that is malformed, has too many tags, or is stale.
    #[test]
    fn thousands_of_tags_cost_no_hmac_and_a_few_cost_one_per_secret() {
        let hooks = Webhooks::new(&[Secret::new("old"), Secret::new(SECRET)]);
        let b = body("ev-1", NOW);
        let b = b.as_bytes();
        let good = mac(SECRET, b);
        let refuse = |header: String, want: Outcome| {
            let (got, key) = call(&hooks, Some(header.as_bytes()), b, NOW);
            assert_eq!((got, key), (want, None), "{:.80}", header);
        };
        // 7 000 empty tags (the reported attack), then the good one: refused, nothing hashed.
        refuse(
            format!("t={NOW},{},v1={good}", "v1=,".repeat(7000)),
            Outcome::BadSignature,
        );
        // Thousands of well-formed tags: refused, nothing hashed.
        let wrong = "ab".repeat(32);
        refuse(
            format!("t={NOW},{}v1={good}", format!("v1={wrong},").repeat(5000)),
            Outcome::BadSignature,
        );
        // One tag past the limit.
        refuse(
            format!(
                "t={NOW},{}v1={good}",
                format!("v1={wrong},").repeat(MAX_TAGS)
            ),
            Outcome::BadSignature,
        );
        // A stale t is refused before hashing.
        let old = NOW - FRESHNESS.as_millis() as u64 - 1;
        refuse(format!("t={old},v1={good}"), Outcome::Stale);
        assert_eq!(hooks.hmacs_computed(), 0, "nothing was hashed");
        // MAX_TAGS wrong tags: one HMAC per secret (2), not one per tag (16).
        let wrong_tags = vec![format!("v1={wrong}"); MAX_TAGS].join(",");
        refuse(format!("t={NOW},{wrong_tags}"), Outcome::BadSignature);
        assert_eq!(hooks.hmacs_computed(), 2);
        // The good tag last among MAX_TAGS: accepted, under the second secret, for 2 more.
        let tags = vec![format!("v1={wrong}"); MAX_TAGS - 1].join(",");
        let header = format!("t={NOW},{tags},v1={good}");
        let (got, _) = call(&hooks, Some(header.as_bytes()), b, NOW);
        assert_eq!(got, Outcome::Accepted);
        assert_eq!(hooks.hmacs_computed(), 4);
    }

    #[test]
    fn any_configured_secret_signs_and_none_means_refused() {
        let hooks = Webhooks::new(&[Secret::new("new"), Secret::new("old")]);
        for (n, secret) in ["new", "old"].into_iter().enumerate() {
            let b = body(&format!("ev-{n}"), NOW);
            let sig = format!("t={NOW},v1={}", mac(secret, b.as_bytes()));
            let (got, _) = call(&hooks, Some(sig.as_bytes()), b.as_bytes(), NOW);
            assert_eq!(got, Outcome::Accepted, "{secret}");
        }
        let b = body("ev-9", NOW);
        let sig = format!("t={NOW},v1={}", mac("other", b.as_bytes()));
        let got = call(&hooks, Some(sig.as_bytes()), b.as_bytes(), NOW);
        assert_eq!(got, (Outcome::BadSignature, None));
        let none = Webhooks::new(&[]);
        let sig = format!("t={NOW},v1={}", mac(SECRET, b.as_bytes()));
        let got = call(&none, Some(sig.as_bytes()), b.as_bytes(), NOW);
        assert_eq!(got, (Outcome::BadSignature, None));
    }

    /// Issue 16 finding 3: freshness comes from the signed body, not from `t` alone.
    #[test]
    fn the_header_alone_is_judged_before_the_body_is_read() {
        let hooks = hooks();
        let tag = "ab".repeat(32);
        let header = |t: u64| format!("t={t},v1={tag}");
        // What passed: the header's `t`.
        let check = |h: Option<&[u8]>| hooks.check_header(h, NOW).map(|signed| signed.0.t);
        let window = FRESHNESS.as_millis() as u64;
        // Within the window, to its very edge on either side: fine (the tag is checked later).
        for t in [NOW, NOW - window, NOW + window] {
            assert_eq!(check(Some(header(t).as_bytes())), Ok(t), "{t}");
        }
        // One millisecond past it, either way: stale.
        for t in [NOW - window - 1, NOW + window + 1] {
            assert_eq!(
                check(Some(header(t).as_bytes())),
                Err(Outcome::Stale),
                "{t}"
            );
        }
        // Absent or malformed: a bad signature.
        assert_eq!(check(None), Err(Outcome::BadSignature));
        let short = format!("t={NOW},v1=abcd");
        assert_eq!(check(Some(short.as_bytes())), Err(Outcome::BadSignature));
    }

    #[test]
    fn freshness_comes_from_the_signed_timestamp() {
        let hooks = hooks();
        let signed_at = |b: &str, t: u64| format!("t={t},v1={}", mac(SECRET, b.as_bytes()));
        // Signed ten minutes ago, replayed with t rewritten to now.
        let old = NOW - 10 * 60 * 1000;
        let b = body("ev-1", old);
        let got = call(
            &hooks,
            Some(signed_at(&b, NOW).as_bytes()),
            b.as_bytes(),
            NOW,
        );
        assert_eq!(got, (Outcome::Stale, None));
        // Off by one millisecond, either way.
        for ts in [NOW - 1, NOW + 1] {
            let b = body("ev-2", ts);
            let got = call(
                &hooks,
                Some(signed_at(&b, NOW).as_bytes()),
                b.as_bytes(),
                NOW,
            );
            assert_eq!(got, (Outcome::Stale, None), "{ts}");
        }
        // Missing, a string, a float, or a body that is not JSON at all.
        for b in [
            format!(r#"{{"id":"ev-3","event":"task.updated","createdAt":{NOW}}}"#),
            format!(r#"{{"id":"ev-3","timestamp":"{NOW}"}}"#),
            format!(r#"{{"id":"ev-3","timestamp":{NOW}.5}}"#),
            "not json".to_owned(),
        ] {
            let got = call(
                &hooks,
                Some(signed_at(&b, NOW).as_bytes()),
                b.as_bytes(),
                NOW,
            );
            assert_eq!(got, (Outcome::Stale, None), "{b}");
        }
        // Signed and sent at the very edge of the window: still fresh.
        let edge = NOW - FRESHNESS.as_millis() as u64;
        let b = body("ev-edge", edge);
        let got = call(
            &hooks,
            Some(signed_at(&b, edge).as_bytes()),
            b.as_bytes(),
            NOW,
        );
        assert_eq!(got.0, Outcome::Accepted);
        // Nothing refused was remembered: ev-1 and ev-2, properly sent, are first seen.
        for id in ["ev-1", "ev-2"] {
            let b = body(id, NOW);
            let got = call(
                &hooks,
                Some(signed_at(&b, NOW).as_bytes()),
                b.as_bytes(),
                NOW,
            );
            assert_eq!(got.0, Outcome::Accepted, "{id}");
        }
    }

    #[test]
    fn events_without_a_usable_id_are_refused_and_not_remembered() {
        let hooks = hooks();
        let send = |b: &str| {
            let sig = format!("t={NOW},v1={}", mac(SECRET, b.as_bytes()));
            call(&hooks, Some(sig.as_bytes()), b.as_bytes(), NOW)
        };
        let event = r#""event":"task.updated","payload":{"task":{"id":"t1"}}"#;
        for b in [
            format!(r#"{{"timestamp":{NOW},{event}}}"#),
            format!(r#"{{"id":null,"timestamp":{NOW},{event}}}"#),
            format!(r#"{{"id":7,"timestamp":{NOW},{event}}}"#),
            format!(r#"{{"id":"","timestamp":{NOW},{event}}}"#),
            format!(
                r#"{{"id":"{}","timestamp":{NOW},{event}}}"#,
                "x".repeat(MAX_EVENT_ID + 1)
            ),
        ] {
            assert_eq!(send(&b), (Outcome::BadEventId, None), "{b:.60}");
            assert_eq!(send(&b), (Outcome::BadEventId, None), "twice: {b:.60}");
        }
        let longest = "x".repeat(MAX_EVENT_ID);
        let b = format!(r#"{{"id":"{longest}","timestamp":{NOW},{event}}}"#);
        assert_eq!(send(&b).0, Outcome::Accepted);
        assert_eq!(send(&b).0, Outcome::Duplicate);
    }

    /// Issue 16 finding 3: the seen-ids table is bounded in bytes, whatever the ids.
    #[test]
    fn the_seen_table_is_bounded_in_bytes() {
        let hooks = hooks();
        let per_entry = (MAX_EVENT_ID as u64) + u64::from(SEEN_ENTRY_OVERHEAD);
        let fits = SEEN_MAX_BYTES / per_entry;
        for n in 0..fits * 2 {
            let id = format!("{n:0>width$}", width = MAX_EVENT_ID);
            hooks.seen.insert(id, ());
        }
        let bytes = hooks.seen_bytes();
        assert!(bytes <= SEEN_MAX_BYTES, "{bytes} > {SEEN_MAX_BYTES}");
        assert!(bytes > SEEN_MAX_BYTES / 2, "the table is used: {bytes}");
        assert_eq!(seen_weight(&"x".repeat(36)), 36 + SEEN_ENTRY_OVERHEAD);
        // The newest ids are the ones kept.
        let newest = format!("{:0>width$}", fits * 2 - 1, width = MAX_EVENT_ID);
        assert!(hooks.seen.contains_key(&newest));
    }

    #[test]
    fn tags_compare_in_full() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
