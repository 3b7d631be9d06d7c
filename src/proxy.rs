//! The public request path, top to bottom in one handler:
//! route → method and body checks → cache → coalesced upstream fetch → classify → store →
//! respond, then one access event with SPEC's fields.

use std::{sync::Arc, time::Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use tracing::{field, Instrument};

use crate::{
    answer::{self, Answer, Body, CacheStatus, Ttls},
    cache::{TaskCache, UpstreamReport},
    config::{ApiKey, Config},
    ids::{self, TraceContext},
    metrics::Metrics,
    phase::Phase,
    route::{self, Route},
    upstream::{self, SetupError, Upstream},
};

static TRACEPARENT: header::HeaderName = header::HeaderName::from_static("traceparent");
const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");

/// Everything one request needs, shared by all connections.
pub struct Proxy {
    upstream: Upstream,
    cache: Arc<TaskCache>,
    ttls: Ttls,
    api_key: ApiKey,
    metrics: Metrics,
}

/// What the access event reports about one request.
#[derive(Default)]
struct Outcome {
    cache: Option<CacheStatus>,
    phase: Option<Phase>,
    upstream: Option<UpstreamReport>,
    coalesced: bool,
}

impl Proxy {
    pub fn new(cfg: &Config) -> Result<Self, SetupError> {
        Ok(Self {
            upstream: Upstream::new(cfg)?,
            cache: Arc::new(TaskCache::new(cfg.cache_max_bytes)),
            ttls: Ttls {
                completed: cfg.ttl_completed,
                failed: cfg.ttl_failed,
                not_found: cfg.ttl_not_found,
                pending: cfg.ttl_pending,
            },
            api_key: cfg.api_key.clone(),
            metrics: Metrics::new(),
        })
    }

    pub fn cache(&self) -> &TaskCache {
        &self.cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub async fn handle<B: hyper::body::Body>(self: Arc<Self>, req: Request<B>) -> Response<Body> {
        let start = Instant::now();
        let request_id = req
            .headers()
            .get(&answer::X_REQUEST_ID)
            .filter(|v| ids::accept_request_id(v))
            .cloned()
            .unwrap_or_else(ids::new_request_id);
        let trace = TraceContext::continue_or_start(req.headers().get(&TRACEPARENT));
        let route = route::parse(req.uri().path());
        let span = tracing::info_span!(
            "request",
            request_id = field::display(request_id.to_str().unwrap_or_default()),
            trace_id = field::display(trace.trace_id_hex()),
            method = %req.method(),
            route = route.as_str(),
            task_id = route.task_id().unwrap_or_default(),
        );
        let (resp, outcome) = self
            .serve(&req, route, &request_id, trace)
            .instrument(span)
            .await;

        let elapsed = start.elapsed();
        self.metrics.request(
            route.as_str(),
            resp.status().as_u16(),
            outcome.cache,
            elapsed,
        );
        let upstream = outcome.upstream;
        tracing::info!(
            target: "taskgate::access",
            request_id = request_id.to_str().unwrap_or_default(),
            trace_id = %trace.trace_id_hex(),
            method = %req.method(),
            route = route.as_str(),
            task_id = route.task_id().unwrap_or_default(),
            status = resp.status().as_u16(),
            cache = outcome.cache.map(CacheStatus::as_str),
            phase = outcome.phase.map(Phase::as_str),
            coalesced = outcome.coalesced,
            upstream_status = upstream.and_then(|u| u.status),
            upstream_error = upstream.and_then(|u| u.error),
            upstream_ms = upstream.map(|u| u.elapsed.as_secs_f64() * 1e3),
            total_ms = elapsed.as_secs_f64() * 1e3,
            "request"
        );
        resp
    }

    async fn serve<B: hyper::body::Body>(
        self: &Arc<Self>,
        req: &Request<B>,
        route: Route<'_>,
        request_id: &HeaderValue,
        trace: TraceContext,
    ) -> (Response<Body>, Outcome) {
        let error = |status, message| {
            (
                answer::error_response(status, message, request_id),
                Outcome::default(),
            )
        };
        let id = match route {
            Route::Task(id) => id,
            Route::BadId => return error(StatusCode::BAD_REQUEST, "invalid task id"),
            Route::TaskEvents(_) => {
                return error(
                    StatusCode::NOT_IMPLEMENTED,
                    "watching a task is not available yet",
                )
            }
            Route::Webhook | Route::NotFound => return error(StatusCode::NOT_FOUND, "not found"),
        };
        match *req.method() {
            Method::GET | Method::HEAD => {}
            Method::OPTIONS => {
                let mut resp = answer::error_response(StatusCode::NO_CONTENT, "", request_id);
                resp.headers_mut().insert(header::ALLOW, ALLOW);
                return (resp, Outcome::default());
            }
            _ => {
                let (mut resp, outcome) =
                    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                resp.headers_mut().insert(header::ALLOW, ALLOW);
                return (resp, outcome);
            }
        }
        if !req.body().is_end_stream() {
            return error(
                StatusCode::BAD_REQUEST,
                "a GET or HEAD request must not carry a body",
            );
        }

        if let Some(answer) = self.cache.get(id).await {
            let outcome = Outcome {
                cache: Some(CacheStatus::Hit),
                phase: answer.phase,
                ..Outcome::default()
            };
            return (
                answer.respond(req.method(), req.headers(), CacheStatus::Hit, request_id),
                outcome,
            );
        }

        let (fetched, coalesced) = self
            .cache
            .fetch_coalesced(id, || {
                let this = Arc::clone(self);
                let id = id.to_owned();
                let request_id = request_id.clone();
                async move {
                    let _in_flight = this.metrics.upstream_started();
                    let (reply, elapsed) =
                        upstream::timed(this.upstream.fetch(&id, &request_id, trace.to_header()))
                            .await;
                    let report = UpstreamReport {
                        status: reply.as_ref().ok().map(|r| r.status.as_u16()),
                        error: reply.as_ref().err().map(|e| e.as_str()),
                        elapsed,
                    };
                    log_upstream_fault(&report);
                    this.metrics.upstream_finished(&report);
                    let answer =
                        Answer::from_upstream(reply, &this.ttls, this.api_key.expose().as_bytes());
                    (answer, Some(report))
                }
                .in_current_span()
            })
            .await;
        if coalesced {
            self.metrics.coalesced_wait();
        }
        let Some(fetched) = fetched else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        let outcome = Outcome {
            cache: Some(fetched.cache),
            phase: fetched.answer.phase,
            upstream: fetched.upstream,
            coalesced,
        };
        (
            fetched
                .answer
                .respond(req.method(), req.headers(), fetched.cache, request_id),
            outcome,
        )
    }
}

fn log_upstream_fault(report: &UpstreamReport) {
    match (report.status, report.error) {
        (_, Some(error)) => tracing::warn!(error, "upstream fetch failed"),
        (Some(401), _) => tracing::error!(
            upstream_status = 401,
            "upstream refused the API key; check TASKGATE_API_KEY (the answer body is not logged)"
        ),
        (Some(status), _) if status >= 500 => {
            tracing::warn!(upstream_status = status, "upstream error")
        }
        _ => {}
    }
}
