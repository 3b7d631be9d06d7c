//! What a client gets for a task: the classification of an upstream reply (SPEC "Answers"),
//! and the one place where task-answer headers are set.
//!
//! An [`Answer`] holds nothing that depends on the request, so one cached answer can serve
//! every client; request-specific headers (`x-request-id`, later CORS) are added by
//! [`Answer::respond`] when it is served.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::{
    phase::{self, Phase},
    redact,
    upstream::{FetchError, Reply},
};

/// Every response body: a complete one, or an event stream (`watch::EventStream`).
pub type Body = Either<Full<Bytes>, crate::watch::EventStream>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// How a task answer was obtained: the `x-cache` header, the log field and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Fetched upstream and stored.
    Miss,
    /// Fetched upstream and not stored.
    Pass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Pass => "PASS",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// How upstream answers are turned into client answers: how long each kind is kept
/// (`TASKGATE_TTL_*`; zero means not cached) and whether bodies are scrubbed.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub completed: Duration,
    pub failed: Duration,
    pub not_found: Duration,
    pub pending: Duration,
    pub redact: bool,
}

/// A task answer, ready to serve to any client.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    content_type: HeaderValue,
    etag: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
    pub phase: Option<Phase>,
    /// `Some` when the answer may be stored, with its lifetime from `stored_at`.
    pub ttl: Option<Duration>,
    /// Whether browsers and shared caches may keep it too (`Cache-Control: public`): only
    /// finished answers; a pending micro-cache stays `no-store`.
    public: bool,
    pub stored_at: Instant,
}

impl Answer {
    /// A JSON error in the API's own shape, never cached.
    pub fn error(status: StatusCode, message: &str) -> Self {
        Self {
            status,
            body: error_body(message),
            content_type: JSON,
            etag: None,
            retry_after: None,
            phase: None,
            ttl: None,
            public: false,
            stored_at: Instant::now(),
        }
    }

    /// Classifies what the API said, as SPEC's answers table does, row by row.
    /// `secret` is the API key: a relayed body that contains it is replaced, never relayed.
    pub fn from_upstream(reply: Result<Reply, FetchError>, policy: &Policy, secret: &[u8]) -> Self {
        let reply = match reply {
            Ok(reply) => reply,
            Err(FetchError::Timeout) => {
                return Self::error(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            }
            Err(FetchError::Saturated) => {
                return Self::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many upstream requests in flight",
                )
            }
            Err(FetchError::TooLarge) => {
                return Self::error(StatusCode::BAD_GATEWAY, "upstream answer too large")
            }
            Err(FetchError::Connect | FetchError::Reset) => {
                return Self::error(StatusCode::BAD_GATEWAY, "upstream unavailable")
            }
        };
        match reply.status {
            StatusCode::OK => Self::task(reply, policy),
            StatusCode::NOT_FOUND => {
                let mut a = Self::error(StatusCode::NOT_FOUND, "not found");
                a.set_ttl(policy.not_found, true);
                a
            }
            // The API's 401 body echoes the key taskgate sent: never relay it.
            StatusCode::UNAUTHORIZED => Self::error(
                StatusCode::BAD_GATEWAY,
                "upstream refused taskgate's API key",
            ),
            StatusCode::FORBIDDEN => Self::error(StatusCode::FORBIDDEN, "forbidden by upstream"),
            StatusCode::TOO_MANY_REQUESTS => {
                let mut a = Self::error(StatusCode::TOO_MANY_REQUESTS, "rate limited by upstream");
                a.retry_after = reply.retry_after.filter(is_retry_after);
                a
            }
            s if s.is_client_error() => {
                let relayable = serde_json::from_slice::<serde::de::IgnoredAny>(&reply.body)
                    .is_ok()
                    && !contains(&reply.body, secret);
                if relayable {
                    let mut a = Self::error(s, "");
                    a.body = reply.body;
                    a
                } else {
                    Self::error(s, "upstream refused the request")
                }
            }
            s if s.is_server_error() => Self::error(StatusCode::BAD_GATEWAY, "upstream error"),
            // 1xx, other 2xx, and 3xx: redirects are not followed, nothing else is expected.
            _ => Self::error(StatusCode::BAD_GATEWAY, "unexpected upstream answer"),
        }
    }

    fn task(reply: Reply, policy: &Policy) -> Self {
        // Scrubbed once here, before the body is stored or hashed: hits cost nothing more.
        let body = match policy.redact {
            true => redact::redact(&reply.body).unwrap_or(reply.body),
            false => reply.body,
        };
        let phase = phase::extract(&body);
        // A body that is not a task is relayed as the API labelled it; a task is JSON.
        let content_type = match phase {
            Some(_) => JSON,
            None => reply.content_type.unwrap_or(JSON),
        };
        let mut a = Self {
            status: StatusCode::OK,
            etag: Some(strong_etag(&body)),
            body,
            content_type,
            retry_after: None,
            phase,
            ttl: None,
            public: false,
            stored_at: Instant::now(),
        };
        match phase {
            Some(Phase::Completed) => a.set_ttl(policy.completed, true),
            Some(Phase::Failed | Phase::Cancelled) => a.set_ttl(policy.failed, true),
            Some(Phase::Pending | Phase::Waiting | Phase::Running) => {
                a.set_ttl(policy.pending, false)
            }
            None => {}
        }
        a
    }

    /// The answer while the API's 429 back-off runs: no upstream call is made.
    pub fn backoff(left: Duration) -> Self {
        let mut a = Self::error(StatusCode::TOO_MANY_REQUESTS, "rate limited by upstream");
        a.retry_after = Some(retry_after_secs(left));
        a
    }

    fn set_ttl(&mut self, ttl: Duration, public: bool) {
        if !ttl.is_zero() {
            self.ttl = Some(ttl);
            self.public = public;
        }
    }

    pub fn is_cacheable(&self) -> bool {
        self.ttl.is_some()
    }

    /// Lifetime left from now: how long a cache may still keep it.
    pub fn remaining(&self) -> Duration {
        self.ttl.map_or(Duration::ZERO, |ttl| {
            ttl.saturating_sub(self.stored_at.elapsed())
        })
    }

    /// Finished answers and 404s: the ones other replicas may serve too (not the pending
    /// micro-cache, whose answers go stale in a second).
    pub fn is_shared(&self) -> bool {
        self.ttl.is_some() && self.public
    }

    /// The compact, versioned encoding kept in the shared second level (Redis):
    /// `TGA1`, status (u16), stored-at (unix ms, u64), TTL (ms, u64), content type and ETag
    /// (each a u16 length and bytes), then the body. All integers big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let stored_unix_ms =
            unix_ms(SystemTime::now()).saturating_sub(self.stored_at.elapsed().as_millis() as u64);
        let etag = self.etag.as_ref().map_or(&[][..], HeaderValue::as_bytes);
        let ct = self.content_type.as_bytes();
        let mut out = Vec::with_capacity(4 + 2 + 16 + 4 + ct.len() + etag.len() + self.body.len());
        out.extend_from_slice(ENCODING_V1);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.extend_from_slice(&stored_unix_ms.to_be_bytes());
        out.extend_from_slice(&(self.ttl.unwrap_or_default().as_millis() as u64).to_be_bytes());
        for field in [ct, etag] {
            out.extend_from_slice(&(field.len() as u16).to_be_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads [`Answer::encode`]'s output; `None` for anything else (another version, garbage,
    /// an answer whose lifetime is over).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = bytes.strip_prefix(ENCODING_V1)?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = (r.get(..n)?, r.get(n..)?);
            r = tail;
            Some(head)
        };
        let status = StatusCode::from_u16(u16::from_be_bytes(take(2)?.try_into().ok()?)).ok()?;
        let stored_unix_ms = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let ttl = Duration::from_millis(u64::from_be_bytes(take(8)?.try_into().ok()?));
        let ct_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let content_type = HeaderValue::from_bytes(take(ct_len)?).ok()?;
        let etag_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let etag = match take(etag_len)? {
            [] => None,
            e => Some(HeaderValue::from_bytes(e).ok()?),
        };
        let body = Bytes::copy_from_slice(r);
        let age = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(stored_unix_ms));
        if ttl.is_zero()
            || age >= ttl
            || !(status == StatusCode::OK || status == StatusCode::NOT_FOUND)
        {
            return None;
        }
        Some(Self {
            status,
            phase: phase::extract(&body),
            body,
            content_type,
            etag,
            retry_after: None,
            ttl: Some(ttl),
            public: true,
            stored_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        })
    }

    /// Builds the response for one client. Every task-answer header is set here.
    pub fn respond(
        &self,
        method: &Method,
        request_headers: &HeaderMap,
        cache: CacheStatus,
        request_id: &HeaderValue,
    ) -> Response<Body> {
        let now = Instant::now();
        let age = now.saturating_duration_since(self.stored_at);
        let not_modified = self.etag.as_ref().is_some_and(|etag| {
            request_headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .any(|v| etag_matches(v, etag))
        });
        let (status, body) = if not_modified {
            (StatusCode::NOT_MODIFIED, Bytes::new())
        } else if method == Method::HEAD {
            (self.status, Bytes::new())
        } else {
            (self.status, self.body.clone())
        };
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        if !not_modified {
            h.insert(header::CONTENT_TYPE, self.content_type.clone());
            if method == Method::HEAD {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
            }
        }
        if let Some(etag) = &self.etag {
            h.insert(header::ETAG, etag.clone());
        }
        if let Some(retry_after) = &self.retry_after {
            h.insert(header::RETRY_AFTER, retry_after.clone());
        }
        match self.ttl {
            Some(ttl) if self.public => {
                // Whole seconds, so `max-age` + `Age` always add up to the TTL.
                let left = ttl.as_secs().saturating_sub(age.as_secs());
                h.insert(header::CACHE_CONTROL, cache_control_public(left));
            }
            _ => {
                h.insert(header::CACHE_CONTROL, NO_STORE);
            }
        }
        if cache == CacheStatus::Hit {
            h.insert(header::AGE, HeaderValue::from(age.as_secs()));
        }
        h.insert(X_CACHE.clone(), cache.header());
        h.insert(X_REQUEST_ID.clone(), request_id.clone());
        resp
    }
}

/// A non-task error response (bad id, unknown route, wrong method): JSON, never stored.
pub fn error_response(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<Body> {
    let mut resp = Response::new(full(error_body(message)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, JSON);
    h.insert(header::CACHE_CONTROL, NO_STORE);
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    resp
}

/// A bodiless answer (`204`), never stored.
pub fn empty_response(status: StatusCode, request_id: &HeaderValue) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, NO_STORE);
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    resp
}

fn error_body(message: &str) -> Bytes {
    if message.is_empty() {
        return Bytes::new();
    }
    serde_json::to_vec(&serde_json::json!({ "errors": [message] }))
        .expect("a string array always serialises")
        .into()
}

const ENCODING_V1: &[u8] = b"TGA1";

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whole seconds, rounded up so a client that waits that long is not refused again.
pub fn retry_after_secs(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

fn cache_control_public(max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={max_age}")).expect("ascii digits")
}

/// A strong validator derived from the bytes served, so every replica computes the same one.
fn strong_etag(body: &[u8]) -> HeaderValue {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut s = String::with_capacity(34);
    s.push('"');
    for b in &digest.as_ref()[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('"');
    HeaderValue::from_str(&s).expect("hex in quotes")
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

/// `Retry-After` is either delay-seconds or an HTTP-date; anything else is dropped.
fn is_retry_after(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 64 && b.iter().all(|c| c.is_ascii_graphic() || *c == b' ')
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTLS: Policy = Policy {
        completed: Duration::from_secs(86_400),
        failed: Duration::from_secs(30),
        not_found: Duration::from_secs(5),
        pending: Duration::ZERO,
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
        let a = Answer::from_upstream(reply(200, &task("completed")), &TTLS, b"k");
        assert_eq!(a.ttl, Some(TTLS.completed));
        for phase in ["failed", "cancelled"] {
            let a = Answer::from_upstream(reply(200, &task(phase)), &TTLS, b"k");
            assert_eq!(a.ttl, Some(TTLS.failed), "{phase}");
        }
    }

    #[test]
    fn unfinished_and_unknown_bodies_are_not_cached() {
        for body in [
            task("pending"),
            task("waiting"),
            task("running"),
            "<html>".into(),
            "{}".into(),
        ] {
            let a = Answer::from_upstream(reply(200, &body), &TTLS, b"k");
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.ttl, None, "{body}");
            assert_eq!(a.body, body.as_bytes());
        }
    }

    #[test]
    fn a_pending_micro_cache_is_private() {
        let ttls = Policy {
            pending: Duration::from_secs(1),
            ..TTLS
        };
        let a = Answer::from_upstream(reply(200, &task("running")), &ttls, b"k");
        assert_eq!(a.ttl, Some(Duration::from_secs(1)));
        let resp = a.respond(
            &Method::GET,
            &HeaderMap::new(),
            CacheStatus::Hit,
            &HeaderValue::from_static("r"),
        );
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
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
            let a = Answer::from_upstream(reply(upstream, r#"{"errors":["x"]}"#), &TTLS, b"k");
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
            let a = Answer::from_upstream(Err(err), &TTLS, b"k");
            assert_eq!(a.status, status);
            assert!(!a.is_cacheable());
        }
    }

    #[test]
    fn a_401_body_is_never_relayed() {
        let a = Answer::from_upstream(
            reply(401, r#"{"errors":["no token SECRETKEY found"]}"#),
            &TTLS,
            b"SECRETKEY",
        );
        assert!(!contains(&a.body, b"SECRETKEY"));
    }

    #[test]
    fn a_relayed_4xx_body_that_holds_the_key_is_replaced() {
        let a = Answer::from_upstream(
            reply(400, r#"{"errors":["bad SECRETKEY"]}"#),
            &TTLS,
            b"SECRETKEY",
        );
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(!contains(&a.body, b"SECRETKEY"));
        let b = Answer::from_upstream(
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
        let a = Answer::from_upstream(reply(200, &task("completed")), &TTLS, b"k");
        assert!(a.is_shared());
        let b = Answer::decode(&a.encode()).expect("decodes");
        assert_eq!(
            (b.status, &b.body, &b.etag, b.phase, b.ttl),
            (a.status, &a.body, &a.etag, a.phase, a.ttl)
        );
        // Stored times travel in whole milliseconds.
        assert!(b.remaining() <= a.remaining() + Duration::from_millis(2));
        assert!(b.remaining() > TTLS.completed - Duration::from_secs(2));
        let nf = Answer::from_upstream(reply(404, "{}"), &TTLS, b"k");
        assert_eq!(
            Answer::decode(&nf.encode()).unwrap().status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn garbage_and_other_versions_do_not_decode() {
        let a = Answer::from_upstream(reply(200, &task("completed")), &TTLS, b"k");
        let mut other_version = a.encode();
        other_version[3] = b'2';
        for bytes in [
            &b""[..],
            b"TGA1",
            b"garbage",
            &other_version,
            &a.encode()[..20],
        ] {
            assert!(Answer::decode(bytes).is_none());
        }
        let ttls = Policy {
            pending: Duration::from_secs(1),
            ..TTLS
        };
        let running = Answer::from_upstream(reply(200, &task("running")), &ttls, b"k");
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
