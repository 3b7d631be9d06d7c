//! The access event: one per request, target `taskgate::access`.
//!
//! With the JSON log format installed by [`super::init`] and the filter enabling the event
//! outright, the line is built here from typed fields and appended to the log queue: no
//! `tracing` dispatch, no field visitor, no filter check per request. That path cost about a
//! quarter of a cache hit's user-space instructions (callgrind, BENCHMARKS.md). The line is the
//! one the `tracing` event would have printed, byte for byte (checked in the tests). Otherwise
//! (the `pretty` format, a filter that depends on span fields, a subscriber installed by
//! someone else) it is an ordinary `tracing` event.

use std::{
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use tracing::subscriber::Interest;

use super::log::{push_f64, push_str_member, push_timestamp, with_line, LogQueue};

/// The event's target, as filters name it.
pub const TARGET: &str = "taskgate::access";

/// What one request came to: the fields of its access event, in the order they are printed.
/// `None` fields are left out.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessEvent<'a> {
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub kind: Option<&'a str>,
    pub id: Option<&'a str>,
    pub task_id: Option<&'a str>,
    pub status: u16,
    pub cache: Option<&'a str>,
    pub phase: Option<&'a str>,
    pub not_cached: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub side: Option<&'a str>,
    pub coalesced: bool,
    pub upstream_status: Option<u16>,
    pub upstream_error: Option<&'a str>,
    pub upstream_ms: Option<f64>,
    pub webhook: Option<&'a str>,
    pub access: Option<&'a str>,
    pub total_ms: f64,
}

/// How access events are written, once [`install`] has decided.
enum Path {
    /// Built here and appended to the JSON log's queue.
    Direct(Arc<LogQueue>),
    /// The filter turns them off.
    Off,
}

/// Unset: a `tracing` event.
static PATH: OnceLock<Path> = OnceLock::new();

/// Writes the access event of one request, built by `event` only when it is written.
pub fn access<'a>(event: impl FnOnce() -> AccessEvent<'a>) {
    match PATH.get() {
        Some(Path::Direct(queue)) => with_line(|line| {
            push_line(line, &event(), SystemTime::now());
            queue.push(line.as_bytes());
        }),
        Some(Path::Off) => {}
        None => {
            if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
                emit(&event());
            }
        }
    }
}

/// Chooses the path for good, once the JSON log layer writing to `queue` is the global
/// subscriber: direct when `interest` says always, nothing when never, and the `tracing`
/// event when it depends (a directive on span fields).
pub(super) fn install(interest: &Interest, queue: Arc<LogQueue>) {
    let path = if interest.is_always() {
        Path::Direct(queue)
    } else if interest.is_never() {
        Path::Off
    } else {
        return;
    };
    let _ = PATH.set(path);
}

/// The line the JSON log layer prints for the `tracing` event [`emit`] sends. Each member is
/// written with its name, quotes and separators as one literal: a line is a few dozen short
/// copies.
fn push_line(line: &mut String, e: &AccessEvent<'_>, now: SystemTime) {
    line.reserve(512);
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line, now);
    line.push_str("\",\"level\":\"INFO\",\"message\":\"request\"");
    push_str_member(line, ",\"request_id\":\"", e.request_id);
    push_str_member(line, ",\"trace_id\":\"", e.trace_id);
    push_str_member(line, ",\"method\":\"", e.method);
    push_str_member(line, ",\"route\":\"", e.route);
    text(line, ",\"kind\":\"", e.kind);
    text(line, ",\"id\":\"", e.id);
    text(line, ",\"task_id\":\"", e.task_id);
    line.push_str(",\"status\":");
    line.push_str(itoa::Buffer::new().format(e.status));
    text(line, ",\"cache\":\"", e.cache);
    text(line, ",\"phase\":\"", e.phase);
    text(line, ",\"not_cached\":\"", e.not_cached);
    text(line, ",\"reason\":\"", e.reason);
    text(line, ",\"side\":\"", e.side);
    line.push_str(if e.coalesced {
        ",\"coalesced\":true"
    } else {
        ",\"coalesced\":false"
    });
    if let Some(status) = e.upstream_status {
        line.push_str(",\"upstream_status\":");
        line.push_str(itoa::Buffer::new().format(status));
    }
    text(line, ",\"upstream_error\":\"", e.upstream_error);
    if let Some(ms) = e.upstream_ms {
        line.push_str(",\"upstream_ms\":");
        push_f64(line, ms);
    }
    text(line, ",\"webhook\":\"", e.webhook);
    text(line, ",\"access\":\"", e.access);
    line.push_str(",\"total_ms\":");
    push_f64(line, e.total_ms);
    line.push_str(",\"target\":\"");
    line.push_str(TARGET);
    line.push_str("\"}\n");
}

/// The member for `value`; nothing for `None`.
fn text(line: &mut String, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        push_str_member(line, key, value);
    }
}

/// The access event as a `tracing` event.
fn emit(e: &AccessEvent<'_>) {
    tracing::info!(
        target: "taskgate::access",
        request_id = e.request_id,
        trace_id = e.trace_id,
        method = e.method,
        route = e.route,
        kind = e.kind,
        id = e.id,
        task_id = e.task_id,
        status = e.status,
        cache = e.cache,
        phase = e.phase,
        not_cached = e.not_cached,
        reason = e.reason,
        side = e.side,
        coalesced = e.coalesced,
        upstream_status = e.upstream_status,
        upstream_error = e.upstream_error,
        upstream_ms = e.upstream_ms,
        webhook = e.webhook,
        access = e.access,
        total_ms = e.total_ms,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::log::capture;

    /// The line the JSON log layer prints for `e` sent as a `tracing` event.
    fn through_tracing(e: &AccessEvent<'_>) -> String {
        capture(|| emit(e))
    }

    fn direct(e: &AccessEvent<'_>) -> String {
        let mut line = String::new();
        push_line(&mut line, e, SystemTime::now());
        line
    }

    /// The line after its timestamp, which differs between two calls.
    fn after_timestamp(line: &str) -> &str {
        let (head, rest) = line.split_once("\",\"level\"").expect("a timestamp");
        assert!(head.starts_with("{\"timestamp\":\"20"), "{line}");
        rest
    }

    fn assert_same_line(e: &AccessEvent<'_>) {
        let traced = through_tracing(e);
        let built = direct(e);
        assert_eq!(traced.lines().count(), 1, "{traced}");
        assert!(
            built.ends_with('\n') && built.lines().count() == 1,
            "{built}"
        );
        assert_eq!(after_timestamp(&built), after_timestamp(&traced));
        serde_json::from_str::<serde_json::Value>(&built).expect("the line is JSON");
    }

    #[test]
    fn every_field_is_printed_as_the_tracing_event_prints_it() {
        assert_same_line(&AccessEvent {
            request_id: "req\"quoted\\\n\u{1}",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            method: "GET",
            route: "task",
            kind: Some("task"),
            id: Some("done-1"),
            task_id: Some("done-1"),
            status: 502,
            cache: Some("STALE"),
            phase: Some("completed"),
            not_cached: Some("pending"),
            reason: Some("upstream_unavailable"),
            side: Some("upstream"),
            coalesced: true,
            upstream_status: Some(503),
            upstream_error: Some("reset"),
            upstream_ms: Some(0.717_899_000_000_000_1),
            webhook: Some("applied"),
            access: Some("valid"),
            total_ms: 2.0,
        });
    }

    #[test]
    fn absent_fields_are_left_out_as_the_tracing_event_leaves_them() {
        let e = AccessEvent {
            request_id: "r",
            trace_id: "t",
            method: "OPTIONS",
            route: "other",
            total_ms: 1e-7,
            ..AccessEvent::default()
        };
        assert_same_line(&e);
        let v: serde_json::Value = serde_json::from_str(&direct(&e)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 11, "{v}");
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["coalesced"], false);
    }
}
