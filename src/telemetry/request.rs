//! The request span's fields without a `tracing` span, for the JSON log.
//!
//! A `tracing` span per request costs a slab entry, its fields formatted into a string, and
//! entering and leaving it on every poll: about a sixth of a cache hit's user-space
//! instructions (callgrind, BENCHMARKS.md), paid on every request for the rare event logged
//! inside one. When only the JSON log would see the span (no span export, and a filter that
//! enables the request span and the access event outright), the request's fields are kept
//! here instead ([`InRequest`]), and the JSON log prints them under `span` for an event logged
//! while the request is polled, exactly as it prints the span's fields. Otherwise
//! ([`spans_needed`]) the request gets its `tracing` span as before.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use super::log::push_str_member;
use crate::{resource, route::Route};
use http::{HeaderValue, Method};
use tracing::field;

/// The request span's name and target.
pub const SPAN_NAME: &str = "request";
pub const SPAN_TARGET: &str = "taskgate::proxy";

/// The fields the request span is made with, in its order.
#[derive(Debug)]
pub struct RequestFields {
    pub request_id: HeaderValue,
    pub trace_id: String,
    pub method: Method,
    pub route: Route,
}

impl RequestFields {
    /// The members of the span's JSON object, as the JSON log's span formatter writes them
    /// for the span `proxy.rs` makes (`"request_id":"…",…`, no braces).
    pub(super) fn push_members(&self, out: &mut String) {
        let request_id = self.request_id.to_str().unwrap_or_default();
        push_str_member(out, "\"request_id\":\"", request_id);
        push_str_member(out, ",\"trace_id\":\"", &self.trace_id);
        push_str_member(out, ",\"method\":\"", self.method.as_str());
        push_str_member(out, ",\"route\":\"", self.route.as_str());
        if let Some(kind) = self.route.kind() {
            push_str_member(out, ",\"kind\":\"", kind.as_str());
        }
        push_str_member(out, ",\"id\":\"", self.route.id().unwrap_or_default());
        if let Some(id) = self.route.task_id() {
            push_str_member(out, ",\"task_id\":\"", id);
        }
    }
}

/// The request span, with the fields [`RequestFields`] keeps when there is none (`trace_id`
/// is recorded later when it is not known yet), and the ones the exported span's attributes
/// get at the end (`proxy.rs`, `record`).
pub fn request_span(
    request_id: &HeaderValue,
    trace_id: Option<&str>,
    method: &Method,
    route: Route,
) -> tracing::Span {
    tracing::info_span!(
        target: SPAN_TARGET,
        SPAN_NAME,
        request_id = request_id.to_str().unwrap_or_default(),
        trace_id,
        method = method.as_str(),
        route = route.as_str(),
        kind = route.kind().map(resource::Kind::as_str),
        id = route.id().unwrap_or_default(),
        task_id = route.task_id(),
        status = field::Empty,
        cache = field::Empty,
        phase = field::Empty,
        upstream_status = field::Empty,
        reason = field::Empty,
    )
}

thread_local! {
    /// The fields of the request being polled on this thread, if any.
    static CURRENT: RefCell<Option<Arc<RequestFields>>> = const { RefCell::new(None) };
}

/// Runs `f` with the fields of the request being polled on this thread, if any.
pub(super) fn with_current<R>(f: impl FnOnce(Option<&RequestFields>) -> R) -> R {
    CURRENT.with(|c| match c.try_borrow() {
        Ok(current) => f(current.as_deref()),
        Err(_) => f(None),
    })
}

pin_project_lite::pin_project! {
    /// A request's future with its fields made current while it is polled (`None`: nothing
    /// is made current, the request has a `tracing` span).
    pub struct InRequest<F> {
        fields: Option<Arc<RequestFields>>,
        #[pin]
        inner: F,
    }
}

impl<F> InRequest<F> {
    pub fn new(fields: Option<RequestFields>, inner: F) -> Self {
        Self::shared(fields.map(Arc::new), inner)
    }

    /// With fields already made current once by [`in_request`].
    pub fn shared(fields: Option<Arc<RequestFields>>, inner: F) -> Self {
        Self { fields, inner }
    }
}

/// Runs `f` with `fields` made current, as a poll of an [`InRequest`] would: for the part of
/// a request served before (or instead of) its future.
pub fn in_request<R>(fields: Option<&Arc<RequestFields>>, f: impl FnOnce() -> R) -> R {
    let Some(fields) = fields else {
        return f();
    };
    let previous = CURRENT.with(|c| c.replace(Some(Arc::clone(fields))));
    let _restore = Restore(previous);
    f()
}

/// Puts back what was current when it was made, also when a poll panics.
struct Restore(Option<Arc<RequestFields>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

impl<F: Future> Future for InRequest<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        in_request(this.fields.as_ref(), || this.inner.poll(cx))
    }
}

/// Whether requests get a `tracing` span: unless `install` found that only the JSON log
/// sees it.
pub fn spans_needed() -> bool {
    !LIGHT.get().copied().unwrap_or(false) || super::spans_exported()
}

/// Set once at start-up: the request's fields are kept by [`InRequest`].
static LIGHT: OnceLock<bool> = OnceLock::new();

/// Decides for good, once the JSON log layer is the global subscriber and writes the access
/// event itself (`light`): requests then go without a `tracing` span. The caller checks that
/// the filter enables the request span outright and holds no directive on spans, so what is
/// logged stays as it was.
pub(super) fn install(light: bool) {
    let _ = LIGHT.set(light);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{route, telemetry::log::capture};

    /// The lines `f` logs through the JSON log layer, each without its timestamp (which
    /// differs from one line to the next).
    fn logged(f: impl FnOnce()) -> Vec<String> {
        capture(f)
            .lines()
            .map(|l| {
                l.split_once("\",\"level\"")
                    .expect("a timestamp")
                    .1
                    .to_owned()
            })
            .collect()
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn warn_inside() {
        tracing::warn!(upstream_status = 401, "the API refused the key");
    }

    #[test]
    fn an_event_in_a_request_without_a_span_shows_the_fields_the_span_would_show() {
        let request_id = HeaderValue::from_static("req-\"1\"");
        for path in ["/task/done-1", "/api/asset/a-b", "/metrics", "/task/%2e"] {
            let route = route::parse(path);
            let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
            let with_span = logged(|| {
                request_span(&request_id, Some(trace_id), &Method::GET, route)
                    .in_scope(warn_inside);
            });
            let fields = RequestFields {
                request_id: request_id.clone(),
                trace_id: trace_id.into(),
                method: Method::GET,
                route,
            };
            let without =
                logged(|| block_on(InRequest::new(Some(fields), async { warn_inside() })));
            assert_eq!(with_span.len(), 1, "{path}");
            assert!(with_span[0].contains("\"span\":{\"request_id\""), "{path}");
            assert_eq!(without, with_span, "{path}");
        }
    }

    #[test]
    fn the_fields_are_current_only_while_the_request_is_polled() {
        let fields = |id: &'static str| RequestFields {
            request_id: HeaderValue::from_static(id),
            trace_id: "t".into(),
            method: Method::GET,
            route: route::parse("/task/x"),
        };
        let current = || with_current(|f| f.map(|f| f.request_id.clone()));
        let lines = logged(|| {
            block_on(async {
                InRequest::new(Some(fields("outer")), async {
                    assert_eq!(current().unwrap(), "outer");
                    InRequest::new(Some(fields("inner")), async {
                        assert_eq!(current().unwrap(), "inner");
                    })
                    .await;
                    assert_eq!(current().unwrap(), "outer");
                    // `None`: the request has a span, nothing is made current.
                    InRequest::new(None, async { assert_eq!(current().unwrap(), "outer") }).await;
                })
                .await;
                assert_eq!(current(), None);
                warn_inside();
            });
        });
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains("\"span\""), "{}", lines[0]);
        // A poll that panics puts back what was current.
        let panicked = std::panic::catch_unwind(|| {
            block_on(InRequest::new(Some(fields("boom")), async {
                panic!("boom")
            }))
        });
        assert!(panicked.is_err());
        assert_eq!(current(), None);
    }
}
