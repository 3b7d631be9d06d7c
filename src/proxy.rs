//! The public request path, top to bottom in one handler:
//! route → method and body checks → rate limit → cache → upstream back-off → coalesced
//! upstream fetch → classify → store → respond (+ CORS), then one access event with SPEC's
//! fields.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use tracing::{field, Instrument};

use crate::{
    answer::{self, Answer, Body, CacheStatus, Policy},
    cache::{TaskCache, UpstreamReport},
    config::{ApiKey, Config},
    cors::Cors,
    ids::{self, TraceContext},
    telemetry,
    limit::{self, Backoff, RateLimiter},
    metrics::Metrics,
    phase::Phase,
    route::{self, Route},
    upstream::{self, SetupError, Upstream},
};

static TRACEPARENT: header::HeaderName = header::HeaderName::from_static("traceparent");
const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");
const CLOSE: HeaderValue = HeaderValue::from_static("close");

/// Everything one request needs, shared by all connections.
pub struct Proxy {
    upstream: Upstream,
    cache: Arc<TaskCache>,
    policy: Policy,
    api_key: ApiKey,
    cors: Cors,
    rate_limit: Option<RateLimiter>,
    trust_forwarded: bool,
    backoff: Backoff,
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
            policy: Policy {
                completed: cfg.ttl_completed,
                failed: cfg.ttl_failed,
                not_found: cfg.ttl_not_found,
                pending: cfg.ttl_pending,
                redact: cfg.redact,
            },
            api_key: cfg.api_key.clone(),
            cors: Cors::new(cfg.cors_origins.clone()),
            rate_limit: RateLimiter::new(cfg.rate_limit, cfg.rate_burst),
            trust_forwarded: cfg.trust_forwarded,
            backoff: Backoff::default(),
            metrics: Metrics::new(),
        })
    }

    pub fn cache(&self) -> &TaskCache {
        &self.cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub async fn handle<B: hyper::body::Body>(
        self: Arc<Self>,
        req: Request<B>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let start = Instant::now();
        let request_id = req
            .headers()
            .get(&answer::X_REQUEST_ID)
            .filter(|v| ids::accept_request_id(v))
            .cloned()
            .unwrap_or_else(ids::new_request_id);
        let route = route::parse(req.uri().path());
        let span = tracing::info_span!(
            "request",
            request_id = field::display(request_id.to_str().unwrap_or_default()),
            trace_id = field::Empty,
            method = %req.method(),
            route = route.as_str(),
            task_id = route.task_id().unwrap_or_default(),
            status = field::Empty,
            cache = field::Empty,
            phase = field::Empty,
            upstream_status = field::Empty,
        );
        // Continues the client's trace; the context returned is this request's own span,
        // the parent of the `traceparent` sent upstream.
        let trace = telemetry::attach(&span, req.headers().get(&TRACEPARENT));
        span.record("trace_id", field::display(trace.trace_id_hex()));
        let (mut resp, outcome) = self
            .serve(&req, peer, route, &request_id, trace)
            .instrument(span.clone())
            .await;
        span.record("status", resp.status().as_u16());
        if let Some(cache) = outcome.cache {
            span.record("cache", cache.as_str());
        }
        if let Some(phase) = outcome.phase {
            span.record("phase", phase.as_str());
        }
        if let Some(status) = outcome.upstream.and_then(|u| u.status) {
            span.record("upstream_status", status);
        }
        if req.method() != Method::OPTIONS {
            self.cors.apply(req.headers(), resp.headers_mut());
        }

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
        peer: SocketAddr,
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
        if let Some(problem) = malformed(req) {
            let (mut resp, outcome) = error(StatusCode::BAD_REQUEST, problem);
            resp.headers_mut().insert(header::CONNECTION, CLOSE);
            return (resp, outcome);
        }
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
                let resp = self.cors.options(req.headers(), request_id);
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
            // Closing is what stops a body from being read as a smuggled next request.
            let (mut resp, outcome) = error(
                StatusCode::BAD_REQUEST,
                "a GET or HEAD request must not carry a body",
            );
            resp.headers_mut().insert(header::CONNECTION, CLOSE);
            return (resp, outcome);
        }
        if let Some(limiter) = &self.rate_limit {
            let client = limit::client_addr(peer, req.headers(), self.trust_forwarded);
            if let Err(wait) = limiter.check(client) {
                let (mut resp, outcome) =
                    error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, answer::retry_after_secs(wait));
                return (resp, outcome);
            }
        }

        if let Some(answer) = self.cache.get(id).await {
            let outcome = Outcome {
                cache: Some(CacheStatus::Hit),
                phase: answer.phase,
                ..Outcome::default()
            };
            let resp = answer.respond(req.method(), req.headers(), CacheStatus::Hit, request_id);
            return (resp, outcome);
        }
        // While the API asks for patience, nothing goes upstream; cached answers (above)
        // are still served.
        if let Some(left) = self.backoff.remaining() {
            let answer = Answer::backoff(left);
            let outcome = Outcome {
                cache: Some(CacheStatus::Pass),
                ..Outcome::default()
            };
            let resp = answer.respond(req.method(), req.headers(), CacheStatus::Pass, request_id);
            return (resp, outcome);
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
                    if let Ok(r) = &reply {
                        if r.status == StatusCode::TOO_MANY_REQUESTS {
                            this.backoff.start(r.retry_after.as_ref());
                        }
                    }
                    let answer = Answer::from_upstream(
                        reply,
                        &this.policy,
                        this.api_key.expose().as_bytes(),
                    );
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
        let resp = fetched
            .answer
            .respond(req.method(), req.headers(), fetched.cache, request_id);
        (resp, outcome)
    }
}

/// Request shapes no browser or SDK sends, refused before routing: taskgate is an origin
/// server for one route, never a forward proxy, and never switches protocols.
fn malformed<B>(req: &Request<B>) -> Option<&'static str> {
    let h1 = req.version() <= Version::HTTP_11;
    // HTTP/2 requests carry :scheme and :authority, so only HTTP/1 targets must be origin-form.
    if h1 && (req.uri().scheme().is_some() || req.uri().authority().is_some()) {
        return Some("only origin-form request targets are accepted");
    }
    if req.headers().contains_key(header::UPGRADE) {
        return Some("protocol upgrades are not supported");
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() || first.is_some_and(|h| !valid_host(h.as_bytes())) {
        return Some("invalid Host header");
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
    if first.is_none() && req.version() == Version::HTTP_11 {
        return Some("missing Host header");
    }
    None
}

/// `host[:port]`, a registered name or an IP literal: no userinfo, path or whitespace.
fn valid_host(h: &[u8]) -> bool {
    (1..=255).contains(&h.len())
        && h.iter().all(|&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

fn log_upstream_fault(report: &UpstreamReport) {
    match (report.status, report.error) {
        (_, Some(error)) => tracing::warn!(error, "upstream fetch failed"),
        (Some(401), _) => tracing::error!(
            upstream_status = 401,
            "upstream refused the API key; check TASKGATE_API_KEY (the answer body is not logged)"
        ),
        (Some(429), _) => tracing::warn!(upstream_status = 429, "upstream rate limit; backing off"),
        (Some(status), _) if status >= 500 => {
            tracing::warn!(upstream_status = status, "upstream error")
        }
        _ => {}
    }
}
