//! The resources taskgate serves, and everything that differs between them.
//!
//! A [`Kind`] names one resource of the Studio API: tasks (`task.rs`) and assets (`asset.rs`),
//! one module and one variant each. Everything the rest of the crate needs to know about a kind comes
//! from here: its name (route segment, upstream path segment, Redis key segment, metric and
//! log label, all one string), the webhook events that name it, and how its answers are read:
//! which phase a body is in and which lifetime that phase earns ([`Lifetime`]).
//!
//! A [`Key`] is a kind and a valid id, stored inline: looking one up in the cache allocates
//! nothing.

mod asset;
mod task;

use std::{
    borrow::Cow,
    fmt,
    hash::{Hash, Hasher},
};

use serde::{
    de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor},
    Deserialize,
};

pub use asset::AssetPhase;
pub use task::TaskPhase;

/// Longest id accepted (Studio ids are 36-character UUIDs).
pub const MAX_ID_LEN: usize = 64;

/// `^[A-Za-z0-9-]{1,64}$`: the only ids that ever reach a cache key or an upstream path.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// One kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Task,
    Asset,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Task, Kind::Asset];

    /// The kind's one name: `/task/{id}`, `{base}/task/{id}`, `…:task:{id}` in Redis, and the
    /// `kind` label of metrics and log events.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Asset => "asset",
        }
    }

    pub fn from_segment(segment: &str) -> Option<Self> {
        Kind::ALL.into_iter().find(|k| k.as_str() == segment)
    }

    /// Whether a webhook event (`task.updated`, …) says a resource of this kind changed.
    pub fn changed_by(self, event: &str) -> bool {
        match self {
            Kind::Task => task::CHANGE_EVENTS.contains(&event),
            Kind::Asset => asset::CHANGE_EVENTS.contains(&event),
        }
    }

    /// The phase of a body of this kind, or `None` when the body is not a JSON object with a
    /// known `status.phase` (such an answer is passed through, never cached).
    pub fn phase(self, body: &[u8]) -> Option<Phase> {
        match self {
            Kind::Task => read_phase(body, TaskPhase::from_str).map(Phase::Task),
            Kind::Asset => read_phase(body, AssetPhase::from_str).map(Phase::Asset),
        }
    }

    /// [`Kind::phase`] of a body already parsed (with redaction on, the one parse serves the
    /// phase, the scrub and the bytes served): `None` unless it is an object with a known
    /// `status.phase`.
    pub fn phase_of_value(self, body: &serde_json::Value) -> Option<Phase> {
        match self {
            Kind::Task => value_phase(body, TaskPhase::from_str).map(Phase::Task),
            Kind::Asset => value_phase(body, AssetPhase::from_str).map(Phase::Asset),
        }
    }

    /// What a watch compares to decide whether a body changed: the `status` object, and for
    /// assets also `playbackUrl` and `downloadUrl` (source playback becomes ready while the
    /// asset is `processing`).
    pub fn watched_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Task => &["status"],
            Kind::Asset => &["status", "playbackUrl", "downloadUrl"],
        }
    }
}

// Deserialising only the path we need skips the rest of the body without building a tree.
/// `status.phase` of a body, read by `parse`: `None` when the body is not a JSON object with
/// a string there that `parse` knows.
fn read_phase<P>(body: &[u8], parse: fn(&str) -> Option<P>) -> Option<P> {
    parse(&status_member::<Text<'_>>(body, "phase")?.0)
}

/// A JSON string, borrowed from the body unless it has escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// `status.<name>` of a body that is one JSON object whose `status` is an object, read as
/// `T`; `None` if either is missing, of another type, or named twice. Not derived structs:
/// those also take an array of their fields in order, so `[["completed"]]` would read as a
/// completed task.
fn status_member<'de, T: Deserialize<'de>>(body: &'de [u8], name: &'static str) -> Option<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let phase = Member {
        name,
        value: std::marker::PhantomData::<T>,
    };
    let status = Member {
        name: "status",
        value: phase,
    };
    let found = status.deserialize(&mut de).ok()?;
    de.end().ok()?;
    found.flatten()
}

/// The member `name` of a JSON object, read by `value` (`None` if the object has none).
/// Anything but an object, or `name` twice, is an error.
#[derive(Clone, Copy)]
struct Member<S> {
    name: &'static str,
    value: S,
}

impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for Member<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for Member<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if key.0 != self.name {
                map.next_value::<IgnoredAny>()?;
            } else if found.is_some() {
                return Err(de::Error::duplicate_field(self.name));
            } else {
                found = Some(map.next_value_seed(self.value)?);
            }
        }
        Ok(found)
    }
}

/// [`read_phase`] on a parsed body.
fn value_phase<P>(body: &serde_json::Value, parse: fn(&str) -> Option<P>) -> Option<P> {
    parse(body.get("status")?.get("phase")?.as_str()?)
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status.updatedAt` of a resource body (tasks and assets alike), as text: the version a
/// watch names its events by.
pub fn updated_at(body: &[u8]) -> Option<String> {
    match status_member::<serde_json::Value>(body, "updatedAt")? {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// Where a resource stands, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Task(TaskPhase),
    Asset(AssetPhase),
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Task(p) => p.as_str(),
            Phase::Asset(p) => p.as_str(),
        }
    }

    /// The kind of resource this is a phase of.
    pub fn kind(self) -> Kind {
        match self {
            Phase::Task(_) => Kind::Task,
            Phase::Asset(_) => Kind::Asset,
        }
    }

    /// How long an answer in this phase may be kept: which TTL setting applies.
    pub fn lifetime(self) -> Lifetime {
        match self {
            Phase::Task(p) => p.lifetime(),
            Phase::Asset(p) => p.lifetime(),
        }
    }

    /// The resource will not move again by itself: a watch ends after sending it.
    pub fn is_finished(self) -> bool {
        self.lifetime() != Lifetime::Unfinished
    }
}

/// Which TTL setting an answer earns (`TASKGATE_TTL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Cannot change through the API: `TTL_COMPLETED`.
    Completed,
    /// Finished, but a retry can change it: `TTL_FAILED`.
    Failed,
    /// A `ready` asset: finished, but a `PATCH`, an IPFS export or a deletion changes it:
    /// `TTL_ASSET_READY`.
    AssetReady,
    /// Still moving: not kept, or `TTL_PENDING`.
    Unfinished,
}

/// A kind and a valid id, inline: hashing and comparing it touches no heap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    kind: Kind,
    len: u8,
    id: [u8; MAX_ID_LEN],
}

impl Key {
    /// `None` unless `id` is valid ([`is_valid_id`]).
    pub fn new(kind: Kind, id: &str) -> Option<Self> {
        if !is_valid_id(id) {
            return None;
        }
        let mut buf = [0; MAX_ID_LEN];
        buf[..id.len()].copy_from_slice(id.as_bytes());
        Some(Self {
            kind,
            len: id.len() as u8,
            id: buf,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn id(&self) -> &str {
        std::str::from_utf8(&self.id[..usize::from(self.len)])
            .expect("built from a valid id, which is ASCII")
    }
}

/// Only the id's own bytes are hashed, in one write: a derived `Hash` fed SipHash the whole
/// 64-byte array, zeros included, with a length before it (about 500 instructions per hash;
/// a pass-through hashes its key six times). Equal keys have equal bytes, so they still hash
/// alike.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u8(self.kind as u8);
        state.write(&self.id[..usize::from(self.len)]);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_and_version_are_read_from_objects_only() {
        let task = |body: &str| Kind::Task.phase(body.as_bytes());
        let completed = Some(Phase::Task(TaskPhase::Completed));
        assert_eq!(task(r#"{"status":{"phase":"completed"}}"#), completed);
        assert_eq!(
            task(r#" {"a":[1],"status":{"x":{},"phase":"compl\u0065ted"}} "#),
            completed
        );
        for body in [
            r#"[["completed"]]"#,
            r#"[{"phase":"completed"}]"#,
            r#"{"status":["completed"]}"#,
            r#"{"status":{"phase":"completed"},"status":{"phase":"completed"}}"#,
            r#"{"status":{"phase":"completed","phase":"completed"}}"#,
            r#"{"status":{"phase":"completed"}} {}"#,
            r#"{"status":{"phase":null}}"#,
            r#"{"status":null}"#,
            r#"{"phase":"completed"}"#,
        ] {
            assert_eq!(task(body), None, "{body}");
        }
        assert_eq!(
            updated_at(br#"{"status":{"updatedAt":1717000090000}}"#).as_deref(),
            Some("1717000090000")
        );
        assert_eq!(
            updated_at(br#"{"status":{"updatedAt":"v2"}}"#).as_deref(),
            Some("v2")
        );
        for body in [
            &br#"[[1717000090000]]"#[..],
            br#"{"status":[1]}"#,
            br#"{"status":{}}"#,
        ] {
            assert_eq!(updated_at(body), None);
        }
    }

    #[test]
    fn keys_hold_exactly_valid_ids() {
        let longest = "a".repeat(MAX_ID_LEN);
        let key = Key::new(Kind::Task, &longest).unwrap();
        assert_eq!((key.kind(), key.id()), (Kind::Task, longest.as_str()));
        for bad in ["", "a/b", "a.b", "é", &format!("{longest}a")] {
            assert!(Key::new(Kind::Task, bad).is_none(), "{bad:?}");
        }
        assert_ne!(Key::new(Kind::Task, "ab"), Key::new(Kind::Task, "abc"));
        assert_ne!(Key::new(Kind::Task, "ab"), Key::new(Kind::Asset, "ab"));
    }

    #[test]
    fn keys_hash_by_kind_and_id() {
        use std::hash::BuildHasher;
        let hasher = std::hash::RandomState::new();
        let hash = |kind, id| hasher.hash_one(Key::new(kind, id).unwrap());
        let longest = "a".repeat(MAX_ID_LEN);
        for id in ["ab", "a-b", longest.as_str()] {
            assert_eq!(hash(Kind::Task, id), hash(Kind::Task, id), "{id}");
        }
        let mut seen = std::collections::HashSet::new();
        for kind in Kind::ALL {
            for id in ["ab", "abc", "abd", "ba", "ab0", longest.as_str()] {
                assert!(
                    seen.insert(hash(kind, id)),
                    "{kind}/{id} hashed like another key"
                );
            }
        }
    }

    #[test]
    fn each_kind_round_trips_through_its_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_segment(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::from_segment("tasks"), None);
        assert_eq!(Kind::from_segment("asset"), Some(Kind::Asset));
    }
}
