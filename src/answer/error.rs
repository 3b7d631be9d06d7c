//! Every way a request can fail to get a resource, in one type that knows its side.
//!
//! As Pingora's `ErrorSource`: a failure is the client's (a bad request, a limit), the
//! upstream's (the API refused, failed or was too slow) or taskgate's own. One match maps each
//! to its status, its `{"errors": [...]}` message and its `reason`: the access event's
//! `reason` field and the `reason` label of `taskgate_requests_total` both come from
//! [`Error::reason`].

use std::time::Duration;

use http::StatusCode;

use crate::resource::Kind;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        }
    }
}

/// The methods a route accepts, for `405` answers' `Allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// Resource reads and watches: `GET, HEAD, OPTIONS`.
    Read,
    /// The webhook: `POST`.
    Post,
}

impl Allow {
    pub fn as_str(self) -> &'static str {
        match self {
            Allow::Read => "GET, HEAD, OPTIONS",
            Allow::Post => "POST",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    // ---- the client's side
    /// A request shape no browser or SDK sends (absolute-form target, `Upgrade`, bad `Host`).
    Malformed(&'static str),
    BadId(Kind),
    NoRoute,
    Method(Allow),
    /// A request head (request line and headers) over the limit.
    HeadTooLarge,
    /// A `GET` or `HEAD` with a body.
    BodyOnGet,
    /// The per-client request budget is spent; retry after this long.
    RateLimited(Duration),
    /// The per-client budget for requests that need the API is spent.
    MissBudget(Duration),
    /// A webhook body over its limit.
    BodyTooLarge,
    /// A webhook body that ended early.
    IncompleteBody,
    /// A webhook body that did not arrive within `TASKGATE_HEADER_TIMEOUT`.
    BodyTimeout,
    BadSignature,
    StaleWebhook,
    /// A signed, fresh webhook event without a usable `id` (missing, empty, too long):
    /// it could not be deduplicated.
    BadEventId,
    /// A CORS preflight from an origin (or for a method) that is not allowed.
    PreflightRefused,
    /// An admin request whose `Host` is a DNS name other than `localhost` (DNS rebinding).
    ForeignHost,
    /// Viewer access is on and the request carries no token.
    AccessTokenMissing,
    /// A malformed, badly signed, expired or not yet valid viewer token.
    AccessTokenInvalid,
    /// A valid viewer token that does not grant the id asked for.
    AccessForbidden,
    /// A viewer token in the `Authorization` header and in the query (or twice in one).
    AccessTokenTwice,
    /// A state-changing admin request without the admin token (or, with none configured,
    /// from a peer that is not loopback).
    AdminForbidden,

    // ---- the upstream's side
    /// The API answered 429 a moment ago; nothing goes upstream for this long.
    Backoff(Duration),
    UpstreamTimeout,
    /// No upstream slot came free within the timeout.
    NoUpstreamSlot,
    UpstreamTooLarge,
    /// Connection refused, reset, or nonsense on the wire.
    UpstreamUnavailable,
    /// The API refused taskgate's key (its 401 body echoes the key: never relayed).
    UpstreamKeyRefused,
    UpstreamForbidden,
    UpstreamRateLimited,
    /// Another 4xx whose body could not be relayed as it was.
    UpstreamRefused(StatusCode),
    /// A 4xx whose own JSON body is relayed.
    UpstreamClientError(StatusCode),
    UpstreamError,
    /// A 1xx, 3xx or 2xx other than 200: redirects are never followed.
    UpstreamUnexpected,
    /// A 200 whose body cannot be parsed (not JSON, not UTF-8, nested past the parser's
    /// limit) while redaction is on: it cannot be scrubbed, so it is never relayed.
    UpstreamUnreadable,
    /// A 200 whose body holds taskgate's API key (escaped or encoded included): withheld.
    UpstreamHeldKey,

    /// One client holds as many watch streams as it may.
    WatchClientLimit,

    // ---- taskgate's own
    /// Too many watched ids.
    WatchLimit,
    Internal,
}

impl Error {
    pub fn side(self) -> Side {
        use Error::*;
        match self {
            Malformed(_) | BadId(_) | NoRoute | Method(_) | HeadTooLarge | BodyOnGet
            | RateLimited(_) | MissBudget(_) | BodyTooLarge | IncompleteBody | BodyTimeout
            | BadSignature | StaleWebhook | BadEventId | PreflightRefused | ForeignHost
            | WatchClientLimit | AccessTokenMissing | AccessTokenInvalid | AccessForbidden
            | AccessTokenTwice | AdminForbidden => Side::Client,
            Backoff(_)
            | UpstreamTimeout
            | NoUpstreamSlot
            | UpstreamTooLarge
            | UpstreamUnavailable
            | UpstreamKeyRefused
            | UpstreamForbidden
            | UpstreamRateLimited
            | UpstreamRefused(_)
            | UpstreamClientError(_)
            | UpstreamError
            | UpstreamUnexpected
            | UpstreamUnreadable
            | UpstreamHeldKey => Side::Upstream,
            WatchLimit | Internal => Side::Internal,
        }
    }

    /// Status, message and reason, decided in one place.
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        use Error::*;
        match self {
            Malformed(why) => (StatusCode::BAD_REQUEST, why, "malformed"),
            BadId(kind) => (
                StatusCode::BAD_REQUEST,
                match kind {
                    Kind::Task => "invalid task id",
                    Kind::Asset => "invalid asset id",
                },
                "bad_id",
            ),
            NoRoute => (StatusCode::NOT_FOUND, "not found", "no_route"),
            Method(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                "method",
            ),
            HeadTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
                "head_too_large",
            ),
            BodyOnGet => (
                StatusCode::BAD_REQUEST,
                "a GET or HEAD request must not carry a body",
                "body_on_get",
            ),
            RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit exceeded",
                "rate_limited",
            ),
            MissBudget(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests for uncached resources",
                "miss_budget",
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "webhook body too large",
                "body_too_large",
            ),
            IncompleteBody => (
                StatusCode::BAD_REQUEST,
                "incomplete body",
                "incomplete_body",
            ),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "webhook body not received in time",
                "body_timeout",
            ),
            BadSignature => (
                StatusCode::UNAUTHORIZED,
                "bad webhook signature",
                "bad_signature",
            ),
            StaleWebhook => (
                StatusCode::UNAUTHORIZED,
                "stale webhook call",
                "stale_webhook",
            ),
            BadEventId => (
                StatusCode::BAD_REQUEST,
                "webhook event id missing or invalid",
                "bad_event_id",
            ),
            PreflightRefused => (
                StatusCode::FORBIDDEN,
                "CORS preflight refused",
                "preflight_refused",
            ),
            ForeignHost => (
                StatusCode::FORBIDDEN,
                "the admin listener answers only a Host that is loopback or its own address",
                "foreign_host",
            ),
            AccessTokenMissing => (
                StatusCode::UNAUTHORIZED,
                "access token required",
                "access_missing",
            ),
            AccessTokenInvalid => (
                StatusCode::UNAUTHORIZED,
                "invalid access token",
                "access_invalid",
            ),
            AccessForbidden => (
                StatusCode::FORBIDDEN,
                "access token does not grant this id",
                "access_forbidden",
            ),
            AccessTokenTwice => (
                StatusCode::BAD_REQUEST,
                "send the access token once: in the Authorization header or as access_token, not both",
                "access_ambiguous",
            ),
            AdminForbidden => (
                StatusCode::FORBIDDEN,
                "admin token required",
                "admin_forbidden",
            ),
            Backoff(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate limited by upstream",
                "backoff",
            ),
            UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream timed out",
                "upstream_timeout",
            ),
            NoUpstreamSlot => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many upstream requests in flight",
                "no_upstream_slot",
            ),
            UpstreamTooLarge => (
                StatusCode::BAD_GATEWAY,
                "upstream answer too large",
                "upstream_too_large",
            ),
            UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream unavailable",
                "upstream_unavailable",
            ),
            UpstreamKeyRefused => (
                StatusCode::BAD_GATEWAY,
                "upstream refused taskgate's API key",
                "upstream_unauthorized",
            ),
            UpstreamForbidden => (
                StatusCode::FORBIDDEN,
                "forbidden by upstream",
                "upstream_forbidden",
            ),
            UpstreamRateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate limited by upstream",
                "upstream_rate_limited",
            ),
            UpstreamRefused(status) => (
                status,
                "upstream refused the request",
                "upstream_client_error",
            ),
            UpstreamClientError(status) => (status, "", "upstream_client_error"),
            UpstreamError => (StatusCode::BAD_GATEWAY, "upstream error", "upstream_error"),
            UpstreamUnexpected => (
                StatusCode::BAD_GATEWAY,
                "unexpected upstream answer",
                "upstream_unexpected",
            ),
            WatchClientLimit => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many watches from this client",
                "watch_client_limit",
            ),
            UpstreamUnreadable => (
                StatusCode::BAD_GATEWAY,
                "unreadable upstream answer",
                "upstream_unreadable",
            ),
            UpstreamHeldKey => (
                StatusCode::BAD_GATEWAY,
                "upstream answer withheld",
                "upstream_held_key",
            ),
            WatchLimit => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many tasks watched",
                "watch_limit",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                "internal",
            ),
        }
    }

    pub fn status(self) -> StatusCode {
        self.parts().0
    }

    /// The text in `{"errors": [...]}`; empty for a relayed upstream body.
    pub fn message(self) -> &'static str {
        self.parts().1
    }

    /// The access event's `reason` and the metric label: a stable name, never data.
    pub fn reason(self) -> &'static str {
        self.parts().2
    }

    /// When a client may try again (`Retry-After`).
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            Error::RateLimited(wait) | Error::MissBudget(wait) | Error::Backoff(wait) => Some(wait),
            _ => None,
        }
    }

    /// `WWW-Authenticate`, on a viewer-token 401 (RFC 6750 §3).
    pub fn www_authenticate(self) -> Option<&'static str> {
        match self {
            Error::AccessTokenMissing => Some("Bearer realm=\"taskgate\""),
            Error::AccessTokenInvalid => Some("Bearer realm=\"taskgate\", error=\"invalid_token\""),
            _ => None,
        }
    }

    /// `Allow`, on a 405.
    pub fn allow(self) -> Option<Allow> {
        match self {
            Error::Method(allow) => Some(allow),
            _ => None,
        }
    }

    /// The connection is closed after the answer: what follows on it cannot be trusted to
    /// be a next request (an unread body, a request no client sends).
    pub fn closes(self) -> bool {
        matches!(
            self,
            Error::Malformed(_)
                | Error::HeadTooLarge
                | Error::BodyOnGet
                | Error::BodyTooLarge
                | Error::BodyTimeout
                // A webhook refused on its head alone: its body was never read.
                | Error::BadSignature
                | Error::StaleWebhook
        )
    }

    /// `{"errors": [message]}` (empty for a relayed upstream body).
    pub fn body(self) -> bytes::Bytes {
        error_body(self.message())
    }
}

/// `{"errors": [message]}`, the API's own error shape; empty for an empty message.
pub fn error_body(message: &str) -> bytes::Bytes {
    if message.is_empty() {
        return bytes::Bytes::new();
    }
    serde_json::to_vec(&serde_json::json!({ "errors": [message] }))
        .expect("a string array always serialises")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_maps_to_its_class_of_status() {
        let all = [
            Error::Malformed("x"),
            Error::BadId(Kind::Task),
            Error::NoRoute,
            Error::Method(Allow::Read),
            Error::HeadTooLarge,
            Error::BodyOnGet,
            Error::RateLimited(Duration::from_secs(1)),
            Error::MissBudget(Duration::from_secs(1)),
            Error::BodyTooLarge,
            Error::IncompleteBody,
            Error::BodyTimeout,
            Error::BadSignature,
            Error::StaleWebhook,
            Error::BadEventId,
            Error::PreflightRefused,
            Error::ForeignHost,
            Error::AccessTokenMissing,
            Error::AccessTokenInvalid,
            Error::AccessForbidden,
            Error::AccessTokenTwice,
            Error::AdminForbidden,
            Error::Backoff(Duration::from_secs(1)),
            Error::UpstreamTimeout,
            Error::NoUpstreamSlot,
            Error::UpstreamTooLarge,
            Error::UpstreamUnavailable,
            Error::UpstreamKeyRefused,
            Error::UpstreamForbidden,
            Error::UpstreamRateLimited,
            Error::UpstreamRefused(StatusCode::BAD_REQUEST),
            Error::UpstreamClientError(StatusCode::CONFLICT),
            Error::UpstreamError,
            Error::UpstreamUnexpected,
            Error::WatchClientLimit,
            Error::UpstreamUnreadable,
            Error::UpstreamHeldKey,
            Error::WatchLimit,
            Error::Internal,
        ];
        let mut reasons = std::collections::HashSet::new();
        for e in all {
            let status = e.status();
            match e.side() {
                Side::Client => assert!(status.is_client_error(), "{e:?}"),
                Side::Upstream => assert!(
                    status.is_server_error() || status.is_client_error(),
                    "{e:?}"
                ),
                Side::Internal => assert!(status.is_server_error(), "{e:?}"),
            }
            // A reason is a label value: lowercase words, never data.
            let reason = e.reason();
            assert!(
                reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{reason}"
            );
            reasons.insert(reason);
        }
        // Upstream 4xx relayed or replaced share one reason; every other reason is distinct.
        assert_eq!(reasons.len(), all.len() - 1);
    }

    #[test]
    fn viewer_token_refusals_say_what_rfc_6750_says() {
        assert_eq!(
            &Error::AccessTokenMissing.body()[..],
            br#"{"errors":["access token required"]}"#
        );
        assert_eq!(
            Error::AccessTokenMissing.www_authenticate(),
            Some(r#"Bearer realm="taskgate""#)
        );
        assert_eq!(
            &Error::AccessTokenInvalid.body()[..],
            br#"{"errors":["invalid access token"]}"#
        );
        assert_eq!(
            Error::AccessTokenInvalid.www_authenticate(),
            Some(r#"Bearer realm="taskgate", error="invalid_token""#)
        );
        assert_eq!(Error::AccessForbidden.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            &Error::AccessForbidden.body()[..],
            br#"{"errors":["access token does not grant this id"]}"#
        );
        assert_eq!(Error::AccessForbidden.www_authenticate(), None);
        assert_eq!(Error::AccessTokenTwice.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn bodies_are_in_the_api_shape() {
        assert_eq!(
            &Error::BadId(Kind::Task).body()[..],
            br#"{"errors":["invalid task id"]}"#
        );
        assert_eq!(
            &Error::BadId(Kind::Asset).body()[..],
            br#"{"errors":["invalid asset id"]}"#
        );
        assert!(Error::UpstreamClientError(StatusCode::CONFLICT)
            .body()
            .is_empty());
    }
}
