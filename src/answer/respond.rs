//! The one place that builds responses. Every header that carries meaning — `cache-control`,
//! `etag`, `age`, `x-cache`, `x-request-id`, `retry-after`, `allow`, `connection`, CORS — is
//! set by [`build`] from a [`Head`], so an answer's headers can be read in one function.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{Either, Full};
use tokio::sync::mpsc;

use super::{
    error::{Allow, Error},
    CacheStatus,
};
use crate::{cors::CorsHeaders, ids::X_REQUEST_ID};

/// Every response body: a complete one, or an event stream.
pub type Body = Either<Full<Bytes>, EventStream>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const REVALIDATE: HeaderValue = HeaderValue::from_static("max-age=0, must-revalidate");
const CLOSE: HeaderValue = HeaderValue::from_static("close");
/// Lets page scripts read what taskgate adds (the SDK only needs the body).
const EXPOSE: HeaderValue =
    HeaderValue::from_static("etag, age, x-cache, x-request-id, retry-after, www-authenticate");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);
/// How long a browser may keep a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: u32 = 600;

/// What browsers and shared caches may do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheControl {
    /// Nothing may keep it (unfinished work, errors, anything per request).
    #[default]
    NoStore,
    /// Any cache may keep it for this many more seconds.
    Public(u64),
    /// Only the browser that asked may keep it, this many more seconds (viewer access is on:
    /// a shared cache must not hand it to someone without a token).
    Private(u64),
}

/// Everything that decides a response's status and headers.
#[derive(Debug, Default)]
pub struct Head {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    /// For `HEAD`: the length of the body that a `GET` would carry.
    pub head_length: Option<usize>,
    pub cache_control: CacheControl,
    /// `Cache-Control: max-age=0, must-revalidate` instead of `cache_control`.
    pub revalidate: bool,
    pub etag: Option<HeaderValue>,
    /// Whole seconds since the answer was fetched, on hits.
    pub age: Option<u64>,
    pub x_cache: Option<CacheStatus>,
    pub retry_after: Option<Duration>,
    /// A `Retry-After` relayed from the API as it was written.
    pub retry_after_value: Option<HeaderValue>,
    pub allow: Option<Allow>,
    /// `WWW-Authenticate`, on viewer-token 401s.
    pub www_authenticate: Option<&'static str>,
    /// Close the connection after this answer.
    pub close: bool,
    /// An event stream: `text/event-stream`, not buffered by proxies in front.
    pub event_stream: bool,
    pub cors: CorsHeaders,
}

impl Head {
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// The head of an error answer (its body is [`Error::body`]).
    pub fn error(error: Error) -> Self {
        Self {
            status: error.status(),
            content_type: Some(JSON),
            retry_after: error.retry_after(),
            allow: error.allow(),
            www_authenticate: error.www_authenticate(),
            close: error.closes(),
            ..Self::default()
        }
    }
}

/// Builds the response for one client. Every meaningful header is set here and nowhere else.
pub fn build(head: Head, body: Body, request_id: &HeaderValue) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    let h = resp.headers_mut();
    if head.event_stream {
        h.insert(header::CONTENT_TYPE, EVENT_STREAM);
        // Tells nginx-style proxies in front not to buffer the stream.
        h.insert(X_ACCEL_BUFFERING.clone(), HeaderValue::from_static("no"));
    } else if let Some(ct) = head.content_type {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(len) = head.head_length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some(etag) = head.etag {
        h.insert(header::ETAG, etag);
    }
    if let Some(value) = head.retry_after_value {
        h.insert(header::RETRY_AFTER, value);
    } else if let Some(wait) = head.retry_after {
        h.insert(header::RETRY_AFTER, retry_after_secs(wait));
    }
    let cache_control = match (head.revalidate, head.cache_control) {
        (true, _) => REVALIDATE,
        (false, CacheControl::NoStore) => NO_STORE,
        (false, CacheControl::Public(left)) => max_age("public, max-age=", left),
        (false, CacheControl::Private(left)) => max_age("private, max-age=", left),
    };
    h.insert(header::CACHE_CONTROL, cache_control);
    if let Some(age) = head.age {
        h.insert(header::AGE, HeaderValue::from(age));
    }
    if let Some(x_cache) = head.x_cache {
        h.insert(X_CACHE.clone(), HeaderValue::from_static(x_cache.as_str()));
    }
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(challenge) = head.www_authenticate {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    if let Some(allow) = head.allow {
        h.insert(header::ALLOW, HeaderValue::from_static(allow.as_str()));
    }
    if head.close {
        h.insert(header::CONNECTION, CLOSE);
    }
    match head.cors {
        CorsHeaders::Off => {}
        CorsHeaders::Refused => {
            h.append(header::VARY, VARY_ORIGIN);
        }
        CorsHeaders::Allowed(origin) => {
            h.append(header::VARY, VARY_ORIGIN);
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE);
        }
        CorsHeaders::PreflightRefused => {
            h.insert(header::VARY, VARY_PREFLIGHT);
        }
        CorsHeaders::Preflight {
            origin,
            allow_headers,
        } => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(Allow::Read.as_str()),
            );
            if let Some(asked) = allow_headers {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(PREFLIGHT_MAX_AGE_SECS),
            );
            h.insert(header::VARY, VARY_PREFLIGHT);
        }
    }
    resp
}

/// `prefix` and then `secs` in decimal, written in place (every hit carries one).
fn max_age(prefix: &str, secs: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(secs).as_bytes();
    let mut buf = [0u8; 40];
    let len = prefix.len() + digits.len();
    buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
    buf[prefix.len()..len].copy_from_slice(digits);
    HeaderValue::from_bytes(&buf[..len]).expect("ascii digits")
}

/// Whole seconds, rounded up so a client that waits that long is not refused again.
pub fn retry_after_secs(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// The body of an event-stream response: frames from a small bounded queue. Dropping it (the
/// client left) closes the queue, which ends whatever feeds it.
pub struct EventStream {
    queue: mpsc::Receiver<Bytes>,
}

impl EventStream {
    pub fn new(queue: mpsc::Receiver<Bytes>) -> Self {
        Self { queue }
    }
}

impl http_body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.queue
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_written_in_decimal() {
        for secs in [0, 7, 86_400, u64::MAX] {
            assert_eq!(
                max_age("public, max-age=", secs),
                format!("public, max-age={secs}")
            );
            assert_eq!(
                max_age("private, max-age=", secs),
                format!("private, max-age={secs}")
            );
        }
    }
}
