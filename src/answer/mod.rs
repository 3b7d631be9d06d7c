//! What a client gets for a resource: the classification of an upstream reply (the table in
//! docs/behaviour.md, "Answers"), and what an answer says in its headers when it is served.
//!
//! An [`Answer`] holds nothing that depends on the request, so one cached answer can serve
//! every client; request-specific headers (`x-request-id`, CORS) are added when it is served.
//! Whether an answer may be stored is decided here, once, when it is classified
//! ([`Answer::store`]); the cache only follows that decision.

mod encode;
pub mod error;
pub mod respond;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::{
    limit,
    redact::{self, Refusal},
    resource::{Kind, Lifetime, Phase},
    upstream::{FetchError, Reply},
};
pub use error::{Allow, Error, Side};
pub use respond::{CacheControl, Head};

/// How an answer was obtained: the `x-cache` header, the log field and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Fetched upstream and stored.
    Miss,
    /// Fetched upstream and not stored.
    Pass,
    /// Kept past its lifetime and served because its refresh failed.
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Pass => "PASS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// Why an answer was not stored: logged beside `x-cache: PASS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStore {
    /// Unfinished work, and no pending micro-cache.
    Pending,
    /// A 200 whose body has no known phase.
    NotAResource,
    /// An error: only 404s are negative-cached.
    Error,
    /// The TTL setting for this answer is `0s`.
    Disabled,
    /// An invalidation arrived while it was being fetched: it went to its waiters only.
    Superseded,
    /// Older than the version a webhook announced (the API answered from a lagging replica).
    Behind,
}

impl NoStore {
    pub fn as_str(self) -> &'static str {
        match self {
            NoStore::Pending => "pending",
            NoStore::NotAResource => "not_a_resource",
            NoStore::Error => "error",
            NoStore::Disabled => "disabled",
            NoStore::Superseded => "superseded",
            NoStore::Behind => "behind",
        }
    }
}

/// Whether and how an answer may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Kept for `ttl` from `stored_at`; `public` when browsers and shared caches may keep it
    /// too (finished answers and 404s; unfinished work stays `no-store`); `shared` when other
    /// replicas may serve it too (through the shared level).
    Keep {
        ttl: Duration,
        public: bool,
        shared: bool,
    },
    Pass(NoStore),
}

/// Who may be handed an answer by a cache between taskgate and the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Anyone: finished answers are `public`.
    Anyone,
    /// Only holders of a viewer token: finished answers are `private`, never `public`.
    TokenHolder,
}

/// How upstream answers are turned into client answers: how long each kind is kept
/// (`TASKGATE_TTL_*`; zero means not cached) and whether bodies are scrubbed.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub completed: Duration,
    pub failed: Duration,
    /// A `ready` asset (`TASKGATE_TTL_ASSET_READY`).
    pub asset_ready: Duration,
    pub not_found: Duration,
    pub pending: Duration,
    /// `TASKGATE_WEBHOOK_TRUST_TTL` when webhooks are trusted (else zero): unfinished work is
    /// kept this long, until a webhook names it, and shared with other replicas.
    pub trusted_unfinished: Duration,
    pub redact: bool,
}

impl Policy {
    fn ttl(&self, lifetime: Lifetime) -> Duration {
        match lifetime {
            Lifetime::Completed => self.completed,
            Lifetime::Failed => self.failed,
            Lifetime::AssetReady => self.asset_ready,
            Lifetime::Unfinished => self.pending,
        }
    }
}

/// An answer, ready to serve to any client.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    content_type: HeaderValue,
    etag: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
    pub phase: Option<Phase>,
    pub store: Store,
    /// Why this is not the resource, when it is not.
    pub error: Option<Error>,
    pub stored_at: Instant,
}

impl Answer {
    /// An error in the API's own shape, never stored.
    pub fn error(error: Error) -> Self {
        Self {
            status: error.status(),
            body: error.body(),
            content_type: respond::JSON,
            etag: None,
            retry_after: None,
            phase: None,
            store: Store::Pass(NoStore::Error),
            error: Some(error),
            stored_at: Instant::now(),
        }
    }

    /// Classifies what the API said about a resource of `kind`, as docs/behaviour.md's answers table does,
    /// row by row. `secret` is the API key: a relayed 4xx body that contains it (escaped or
    /// encoded included) is replaced, and with redaction on a 200 holding it is a 502.
    pub fn from_upstream(
        kind: Kind,
        reply: Result<Reply, FetchError>,
        policy: &Policy,
        secret: &[u8],
    ) -> Self {
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                return Self::error(match e {
                    FetchError::Timeout => Error::UpstreamTimeout,
                    FetchError::Saturated => Error::NoUpstreamSlot,
                    FetchError::TooLarge => Error::UpstreamTooLarge,
                    FetchError::Connect | FetchError::Reset => Error::UpstreamUnavailable,
                })
            }
        };
        match reply.status {
            StatusCode::OK => Self::resource(kind, reply, policy, secret),
            StatusCode::NOT_FOUND => {
                let mut a = Self::error(Error::NoRoute);
                a.error = None;
                a.store = keep(policy.not_found, true, true);
                a
            }
            // The API's 401 body echoes the key taskgate sent: never relay it.
            StatusCode::UNAUTHORIZED => Self::error(Error::UpstreamKeyRefused),
            StatusCode::FORBIDDEN => Self::error(Error::UpstreamForbidden),
            StatusCode::TOO_MANY_REQUESTS => {
                let mut a = Self::error(Error::UpstreamRateLimited);
                // The one upstream header a client sees: never relayed as sent (it could echo
                // the key), but read as the back-off reads it and written afresh, in seconds.
                a.retry_after = (reply.retry_after.as_ref())
                    .and_then(limit::retry_after_wait)
                    .map(respond::retry_after_secs);
                a
            }
            s if s.is_client_error() => {
                match relayable_body(kind, &reply.body, policy.redact, secret) {
                    Some(body) => {
                        let mut a = Self::error(Error::UpstreamClientError(s));
                        a.body = body;
                        a
                    }
                    None => Self::error(Error::UpstreamRefused(s)),
                }
            }
            s if s.is_server_error() => Self::error(Error::UpstreamError),
            // 1xx, other 2xx, and 3xx: redirects are not followed, nothing else is expected.
            _ => Self::error(Error::UpstreamUnexpected),
        }
    }

    fn resource(kind: Kind, reply: Reply, policy: &Policy, secret: &[u8]) -> Self {
        let (body, phase, content_type) = if policy.redact {
            // Failing closed: one parse gives the phase, the scrub and the bytes hashed,
            // stored and served (the scrubbed tree, serialised), so nothing the parser did
            // not see (a duplicate key, a body nested past its limit) reaches a client.
            // Scrubbed once here, before the body is stored or hashed: hits cost nothing more.
            match redact::scrub(kind, &reply.body, secret) {
                Ok(scrubbed) => (
                    scrubbed.to_bytes(),
                    kind.phase_of_value(&scrubbed.value),
                    respond::JSON,
                ),
                Err(Refusal::Unreadable) => return Self::error(Error::UpstreamUnreadable),
                Err(Refusal::HoldsKey) => return Self::error(Error::UpstreamHeldKey),
            }
        } else {
            // Redaction off: the body as sent. A body that is not a resource is relayed as
            // the API labelled it; a resource is JSON.
            let phase = kind.phase(&reply.body);
            let content_type = match phase {
                Some(_) => respond::JSON,
                None => reply.content_type.unwrap_or(respond::JSON),
            };
            (reply.body, phase, content_type)
        };
        let store = match phase.map(Phase::lifetime) {
            None => Store::Pass(NoStore::NotAResource),
            Some(Lifetime::Unfinished) if !policy.trusted_unfinished.is_zero() => {
                keep(policy.trusted_unfinished, false, true)
            }
            Some(Lifetime::Unfinished) if policy.pending.is_zero() => Store::Pass(NoStore::Pending),
            Some(Lifetime::Unfinished) => keep(policy.pending, false, false),
            Some(lifetime) => keep(policy.ttl(lifetime), true, true),
        };
        Self {
            status: StatusCode::OK,
            etag: Some(strong_etag(&body)),
            body,
            content_type,
            retry_after: None,
            phase,
            store,
            error: None,
            stored_at: Instant::now(),
        }
    }

    /// The answer while the API's 429 back-off runs: no upstream call is made.
    pub fn backoff(left: Duration) -> Self {
        Self::error(Error::Backoff(left))
    }

    pub fn is_cacheable(&self) -> bool {
        matches!(self.store, Store::Keep { .. })
    }

    /// The TTL it was stored with, when it may be stored.
    pub fn ttl(&self) -> Option<Duration> {
        match self.store {
            Store::Keep { ttl, .. } => Some(ttl),
            Store::Pass(_) => None,
        }
    }

    /// Why it is not stored, when it is not.
    pub fn no_store(&self) -> Option<NoStore> {
        match self.store {
            Store::Keep { .. } => None,
            Store::Pass(why) => Some(why),
        }
    }

    /// Lifetime left from now: how long a cache may still keep it.
    pub fn remaining(&self) -> Duration {
        self.ttl().map_or(Duration::ZERO, |ttl| {
            ttl.saturating_sub(self.stored_at.elapsed())
        })
    }

    /// Answers kept by phase (finished work) may be served past their lifetime while the API
    /// fails; 404s and unfinished work never are.
    pub fn may_be_served_stale(&self) -> bool {
        self.is_cacheable() && self.phase.is_some_and(Phase::is_finished)
    }

    /// A refresh that came to this may be replaced by a stale answer: the API failed or
    /// could not be asked (not a 404, not the API's own 4xx about the request).
    pub fn is_upstream_failure(&self) -> bool {
        self.error.is_some_and(|e| {
            matches!(
                e,
                Error::Backoff(_)
                    | Error::UpstreamTimeout
                    | Error::NoUpstreamSlot
                    | Error::UpstreamTooLarge
                    | Error::UpstreamUnavailable
                    | Error::UpstreamKeyRefused
                    | Error::UpstreamRateLimited
                    | Error::UpstreamError
                    | Error::UpstreamUnexpected
                    | Error::UpstreamUnreadable
                    | Error::UpstreamHeldKey
            )
        })
    }

    /// Finished answers and 404s: the ones other replicas may serve too (not the pending
    /// micro-cache, whose answers go stale in a second).
    pub fn is_shared(&self) -> bool {
        matches!(self.store, Store::Keep { shared: true, .. })
    }

    /// What this answer says to one request: status and headers, and the body to send.
    pub fn head(
        &self,
        method: &Method,
        request_headers: &HeaderMap,
        cache: CacheStatus,
    ) -> (Head, Bytes) {
        self.head_for(method, request_headers, cache, Audience::Anyone)
    }

    /// [`Answer::head`] for an audience: with viewer access on, a kept answer is `private`.
    pub fn head_for(
        &self,
        method: &Method,
        request_headers: &HeaderMap,
        cache: CacheStatus,
        audience: Audience,
    ) -> (Head, Bytes) {
        let age = Instant::now().saturating_duration_since(self.stored_at);
        let not_modified = self.etag.as_ref().is_some_and(|etag| {
            request_headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .any(|v| etag_matches(v, etag))
        });
        let mut head = Head::new(self.status);
        let body = if not_modified {
            head.status = StatusCode::NOT_MODIFIED;
            Bytes::new()
        } else {
            head.content_type = Some(self.content_type.clone());
            if method == Method::HEAD {
                head.head_length = Some(self.body.len());
                Bytes::new()
            } else {
                self.body.clone()
            }
        };
        head.etag = self.etag.clone();
        head.retry_after_value = self.retry_after.clone();
        head.retry_after = self.error.and_then(Error::retry_after);
        if let Store::Keep {
            ttl, public: true, ..
        } = self.store
        {
            // Whole seconds, so `max-age` + `Age` always add up to the TTL.
            let left = ttl.as_secs().saturating_sub(age.as_secs());
            head.cache_control = match audience {
                Audience::Anyone => CacheControl::Public(left),
                Audience::TokenHolder => CacheControl::Private(left),
            };
        }
        if matches!(cache, CacheStatus::Hit | CacheStatus::Stale) {
            head.age = Some(age.as_secs());
        }
        // A stale answer may be used now, but no cache may keep it without asking again.
        head.revalidate = cache == CacheStatus::Stale;
        head.x_cache = Some(cache);
        (head, body)
    }
}

fn keep(ttl: Duration, public: bool, shared: bool) -> Store {
    if ttl.is_zero() {
        Store::Pass(NoStore::Disabled)
    } else {
        Store::Keep {
            ttl,
            public,
            shared,
        }
    }
}

/// A strong validator derived from the bytes served, so every replica computes the same one.
fn strong_etag(body: &[u8]) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut s = Vec::with_capacity(34);
    s.push(b'"');
    for b in &digest.as_ref()[..16] {
        s.push(HEX[usize::from(b >> 4)]);
        s.push(HEX[usize::from(b & 0xf)]);
    }
    s.push(b'"');
    HeaderValue::from_bytes(&s).expect("hex in quotes")
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): `W/` is ignored.
fn etag_matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let ours = etag.as_bytes();
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

/// The body relayed with a 4xx other than 401, 403 and 429, or `None` when a generic one
/// replaces it: when it is not JSON (nested past the parser's limit included), or holds the
/// API key — as sent, after JSON unescaping, or percent-encoded — whatever `TASKGATE_REDACT`
/// says. With redaction on, the relayed bytes are the parsed body scrubbed and serialised.
fn relayable_body(kind: Kind, body: &Bytes, redact: bool, secret: &[u8]) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if contains(body, secret) || redact::holds_key(&value, secret) {
        return None;
    }
    if !redact {
        return Some(body.clone());
    }
    redact::scrub_value(kind, &mut value);
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    redact::contains(haystack, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTLS: Policy = Policy {
        completed: Duration::from_secs(86_400),
        failed: Duration::from_secs(30),
        asset_ready: Duration::from_secs(60),
        not_found: Duration::from_secs(5),
        pending: Duration::ZERO,
        trusted_unfinished: Duration::ZERO,
        redact: true,
    };

    fn reply(status: u16, body: &str) -> Result<Reply, FetchError> {
        Ok(Reply {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: Some(HeaderValue::from_static("application/json; charset=utf-8")),
            retry_after: Some(HeaderValue::from_static("7")),
            body: Bytes::copy_from_slice(body.as_bytes()),
        })
    }

    fn task(phase: &str) -> String {
        format!(r#"{{"id":"t1","status":{{"phase":"{phase}","updatedAt":1}}}}"#)
    }

    #[test]
    fn finished_phases_are_cached_by_their_ttl() {
        let a = Answer::from_upstream(Kind::Task, reply(200, &task("completed")), &TTLS, b"k");
        assert_eq!(a.ttl(), Some(TTLS.completed));
        for phase in ["failed", "cancelled"] {
            let a = Answer::from_upstream(Kind::Task, reply(200, &task(phase)), &TTLS, b"k");
            assert_eq!(a.ttl(), Some(TTLS.failed), "{phase}");
        }
    }

    #[test]
    fn unfinished_and_unknown_bodies_are_not_cached() {
        let redact_off = Policy {
            redact: false,
            ..TTLS
        };
        for body in [
            task("pending"),
            task("waiting"),
            task("running"),
            "<html>".into(),
            "{}".into(),
        ] {
            // With redaction on, what cannot be parsed is a 502: it cannot be scrubbed.
            let policies: &[&Policy] = match body.starts_with('{') {
                true => &[&TTLS, &redact_off],
                false => &[&redact_off],
            };
            for policy in policies {
                let a = Answer::from_upstream(Kind::Task, reply(200, &body), policy, b"k");
                assert_eq!(a.status, StatusCode::OK);
                assert_eq!(a.ttl(), None, "{body}");
                assert_eq!(a.body, body.as_bytes());
            }
        }
    }

    #[test]
    fn with_redaction_on_an_unreadable_200_is_a_502_never_stored() {
        let deep = format!(
            r#"{{"params":{{"x":{}{}}},"status":{{"phase":"completed","updatedAt":1}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for body in ["<html>", "", r#"{"status":{"phase":"completed""#, &deep] {
            let a = Answer::from_upstream(Kind::Task, reply(200, body), &TTLS, b"k");
            assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{body}");
            assert_eq!(a.error, Some(Error::UpstreamUnreadable));
            assert!(!a.is_cacheable());
            assert_eq!(a.body, Error::UpstreamUnreadable.body());
        }
    }

    #[test]
    fn the_phase_and_the_served_bytes_come_from_one_parse() {
        // A duplicate key: the tree keeps the last `params`, and the bytes served are that
        // tree, so the first (secret-bearing) one cannot ride along unscrubbed.
        let body = r#"{"params":{"upload":{"url":"https://u:SECRETPASS@h/"}},"params":{},"status":{"phase":"completed","updatedAt":1}}"#;
        let a = Answer::from_upstream(Kind::Task, reply(200, body), &TTLS, b"k");
        assert_eq!(
            a.phase,
            Some(Phase::Task(crate::resource::TaskPhase::Completed))
        );
        assert!(!contains(&a.body, b"SECRETPASS"));
        assert_eq!(
            a.etag,
            Some(strong_etag(&a.body)),
            "the ETag is of the served bytes"
        );
        assert_eq!(a.content_type, respond::JSON);
    }

    #[test]
    fn a_200_holding_the_key_is_withheld_with_redaction_on() {
        for body in [
            r#"{"status":{"phase":"completed","updatedAt":1},"x":"SECRETKEY"}"#,
            r#"{"status":{"phase":"completed","updatedAt":1},"x":"\u0053ECRETKEY"}"#,
        ] {
            let a = Answer::from_upstream(Kind::Task, reply(200, body), &TTLS, b"SECRETKEY");
            assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{body}");
            assert_eq!(a.error, Some(Error::UpstreamHeldKey));
            assert!(!a.is_cacheable());
            assert!(!contains(&a.body, b"SECRETKEY"));
        }
    }

    #[test]
    fn a_4xx_body_holding_the_key_escaped_is_replaced_whatever_redact_says() {
        for policy in [
            TTLS,
            Policy {
                redact: false,
                ..TTLS
            },
        ] {
            for body in [
                r#"{"errors":["bad \u0053ECRETKEY"]}"#,
                r#"{"errors":["bad SECRET\u004bEY"]}"#,
                r#"{"errors":["bad SECRET%4BEY"]}"#,
                r#"{"SECRETKEY":["bad"]}"#,
            ] {
                let a = Answer::from_upstream(Kind::Task, reply(400, body), &policy, b"SECRETKEY");
                assert_eq!(a.status, StatusCode::BAD_REQUEST);
                assert_eq!(
                    a.error,
                    Some(Error::UpstreamRefused(StatusCode::BAD_REQUEST))
                );
                assert_eq!(
                    a.body,
                    Error::UpstreamRefused(StatusCode::BAD_REQUEST).body()
                );
            }
        }
        // With redaction on, a relayed 4xx body is scrubbed like any other.
        let a = Answer::from_upstream(
            Kind::Task,
            reply(
                422,
                r#"{"errors":["cannot fetch https://h/v.mp4?sig=abc"]}"#,
            ),
            &TTLS,
            b"SECRETKEY",
        );
        assert_eq!(
            &a.body[..],
            br#"{"errors":["cannot fetch https://h/v.mp4?sig=***"]}"#
        );
    }

    #[test]
    fn a_pending_micro_cache_is_private() {
        let ttls = Policy {
            pending: Duration::from_secs(1),
            ..TTLS
        };
        let a = Answer::from_upstream(Kind::Task, reply(200, &task("running")), &ttls, b"k");
        assert_eq!(a.ttl(), Some(Duration::from_secs(1)));
        let (head, _) = a.head(&Method::GET, &HeaderMap::new(), CacheStatus::Hit);
        assert_eq!(head.cache_control, CacheControl::NoStore);
    }

    #[test]
    fn upstream_statuses_map_to_spec_answers() {
        let cases = [
            (404, StatusCode::NOT_FOUND, true),
            (401, StatusCode::BAD_GATEWAY, false),
            (403, StatusCode::FORBIDDEN, false),
            (429, StatusCode::TOO_MANY_REQUESTS, false),
            (400, StatusCode::BAD_REQUEST, false),
            (422, StatusCode::UNPROCESSABLE_ENTITY, false),
            (500, StatusCode::BAD_GATEWAY, false),
            (503, StatusCode::BAD_GATEWAY, false),
            (302, StatusCode::BAD_GATEWAY, false),
            (204, StatusCode::BAD_GATEWAY, false),
        ];
        for (upstream, client, cached) in cases {
            let a = Answer::from_upstream(
                Kind::Task,
                reply(upstream, r#"{"errors":["x"]}"#),
                &TTLS,
                b"k",
            );
            assert_eq!(a.status, client, "upstream {upstream}");
            assert_eq!(a.is_cacheable(), cached, "upstream {upstream}");
        }
    }

    #[test]
    fn transport_failures_map_to_gateway_errors() {
        let cases = [
            (FetchError::Timeout, StatusCode::GATEWAY_TIMEOUT),
            (FetchError::Connect, StatusCode::BAD_GATEWAY),
            (FetchError::Reset, StatusCode::BAD_GATEWAY),
            (FetchError::TooLarge, StatusCode::BAD_GATEWAY),
            (FetchError::Saturated, StatusCode::SERVICE_UNAVAILABLE),
        ];
        for (err, status) in cases {
            let a = Answer::from_upstream(Kind::Task, Err(err), &TTLS, b"k");
            assert_eq!(a.status, status);
            assert!(!a.is_cacheable());
        }
    }

    #[test]
    fn a_401_body_is_never_relayed() {
        let a = Answer::from_upstream(
            Kind::Task,
            reply(401, r#"{"errors":["no token SECRETKEY found"]}"#),
            &TTLS,
            b"SECRETKEY",
        );
        assert!(!contains(&a.body, b"SECRETKEY"));
    }

    #[test]
    fn a_relayed_4xx_body_that_holds_the_key_is_replaced() {
        let a = Answer::from_upstream(
            Kind::Task,
            reply(400, r#"{"errors":["bad SECRETKEY"]}"#),
            &TTLS,
            b"SECRETKEY",
        );
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(!contains(&a.body, b"SECRETKEY"));
        let b = Answer::from_upstream(
            Kind::Task,
            reply(
                400,
                r#"{"errors":["projectId as query param not supported"]}"#,
            ),
            &TTLS,
            b"SECRETKEY",
        );
        assert_eq!(
            &b.body[..],
            br#"{"errors":["projectId as query param not supported"]}"#
        );
    }

    #[test]
    fn shared_answers_survive_the_l2_encoding() {
        let a = Answer::from_upstream(Kind::Task, reply(200, &task("completed")), &TTLS, b"k");
        assert!(a.is_shared());
        let b = Answer::decode(Kind::Task, &a.encode()).expect("decodes");
        assert_eq!(
            (b.status, &b.body, &b.etag, b.phase, b.ttl()),
            (a.status, &a.body, &a.etag, a.phase, a.ttl())
        );
        // Stored times travel in whole milliseconds.
        assert!(b.remaining() <= a.remaining() + Duration::from_millis(2));
        assert!(b.remaining() > TTLS.completed - Duration::from_secs(2));
        let nf = Answer::from_upstream(Kind::Task, reply(404, "{}"), &TTLS, b"k");
        assert_eq!(
            Answer::decode(Kind::Task, &nf.encode()).unwrap().status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn a_shared_value_cannot_choose_its_content_type() {
        let a = Answer::from_upstream(Kind::Task, reply(200, &task("completed")), &TTLS, b"k");
        let mut bytes = a.encode();
        // Rewrite the stored content type as a hostile writer of the shared level would.
        let at = 4 + 2 + 8 + 8;
        let len = u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
        let html = b"text/html";
        bytes.splice(at..at + 2 + len, {
            let mut f = (html.len() as u16).to_be_bytes().to_vec();
            f.extend_from_slice(html);
            f
        });
        let b = Answer::decode(Kind::Task, &bytes).expect("still decodes");
        let (head, _) = b.head(&Method::GET, &HeaderMap::new(), CacheStatus::Hit);
        assert_eq!(head.content_type.unwrap(), "application/json");
    }

    #[test]
    fn garbage_and_other_versions_do_not_decode() {
        let a = Answer::from_upstream(Kind::Task, reply(200, &task("completed")), &TTLS, b"k");
        let mut other_version = a.encode();
        other_version[3] = b'2';
        for bytes in [
            &b""[..],
            b"TGA1",
            b"garbage",
            &other_version,
            &a.encode()[..20],
        ] {
            assert!(Answer::decode(Kind::Task, bytes).is_none());
        }
        let ttls = Policy {
            pending: Duration::from_secs(1),
            ..TTLS
        };
        let running = Answer::from_upstream(Kind::Task, reply(200, &task("running")), &ttls, b"k");
        assert!(
            !running.is_shared(),
            "the pending micro-cache is never shared"
        );
    }

    #[test]
    fn etags_are_strong_and_matched_weakly() {
        let etag = strong_etag(b"body");
        assert!(etag.to_str().unwrap().starts_with('"'));
        assert_ne!(etag, strong_etag(b"other"));
        let weak = HeaderValue::from_str(&format!("W/{}", etag.to_str().unwrap())).unwrap();
        assert!(etag_matches(&weak, &etag));
        let list = HeaderValue::from_str(&format!("\"nope\", {}", etag.to_str().unwrap())).unwrap();
        assert!(etag_matches(&list, &etag));
        assert!(etag_matches(&HeaderValue::from_static("*"), &etag));
        assert!(!etag_matches(&HeaderValue::from_static("\"nope\""), &etag));
    }
}
