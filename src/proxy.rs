//! The public request path, top to bottom in one handler:
//! route → request checks → rate limit → cache → upstream back-off → coalesced upstream
//! fetch → classify → store → respond (+ CORS), then one access event with SPEC's fields.
//! Watches (`/events`) and webhooks branch off after routing and reuse the same lookup.

use std::{
    error::Error as StdError,
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use http::{header, request::Parts, HeaderValue, Method, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Limited};
use hyper::body::Body as HttpBody;
use tracing::{field, Instrument};

use crate::{
    answer::{self, Answer, Body, CacheStatus, Policy},
    cache::{Fetch, TaskCache, UpstreamReport},
    config::{ApiKey, Config},
    cors::Cors,
    ids::{self, TraceContext},
    limit::{self, Backoff, RateLimiter},
    metrics::Metrics,
    phase::Phase,
    route::{self, Route},
    telemetry,
    upstream::{self, SetupError, Upstream},
    watch::Watchers,
    webhook::{self, Webhooks},
};

static TRACEPARENT: header::HeaderName = header::HeaderName::from_static("traceparent");
static LAST_EVENT_ID: header::HeaderName = header::HeaderName::from_static("last-event-id");
static SIGNATURE: header::HeaderName = header::HeaderName::from_static("livepeer-signature");
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
    watchers: Arc<Watchers>,
    webhooks: Option<Webhooks>,
    #[cfg(feature = "redis")]
    l2: Option<Arc<crate::l2::L2>>,
    metrics: Arc<Metrics>,
}

/// What the access event reports about one request.
#[derive(Default)]
struct Outcome {
    cache: Option<CacheStatus>,
    phase: Option<Phase>,
    upstream: Option<UpstreamReport>,
    coalesced: bool,
    webhook: Option<webhook::Outcome>,
}

/// A task answer as one lookup found it.
struct Found {
    answer: Arc<Answer>,
    cache: CacheStatus,
    upstream: Option<UpstreamReport>,
    coalesced: bool,
}

impl Proxy {
    pub fn new(cfg: &Config) -> Result<Self, SetupError> {
        let metrics = Arc::new(Metrics::new());
        #[cfg(feature = "redis")]
        let l2 = match &cfg.redis_url {
            Some(url) => Some(Arc::new(
                crate::l2::L2::new(url.expose(), cfg.redis_timeout, Arc::clone(&metrics))
                    .map_err(SetupError)?,
            )),
            None => None,
        };
        #[cfg(not(feature = "redis"))]
        if cfg.redis_url.is_some() {
            return Err(SetupError(
                "TASKGATE_REDIS_URL: this build has no Redis support (build with --features redis)"
                    .into(),
            ));
        }
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
            watchers: Arc::new(Watchers::new(
                cfg.watch_max,
                cfg.watch_interval,
                metrics.events_sent(),
            )),
            webhooks: cfg.webhook_secret.as_ref().map(Webhooks::new),
            #[cfg(feature = "redis")]
            l2,
            metrics,
        })
    }

    pub fn cache(&self) -> &TaskCache {
        &self.cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    /// Drops an id everywhere taskgate keeps it — memory, the shared level, and through it
    /// every other replica's memory — and makes its watchers fetch it again.
    pub async fn invalidate(&self, id: &str) {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            l2.invalidate(id).await;
        }
        self.forget(id).await;
    }

    /// Drops an id from this replica only (another replica published its invalidation).
    async fn forget(&self, id: &str) {
        self.cache.invalidate(id).await;
        self.watchers.refresh(id);
    }

    /// Starts the background work that lives as long as the proxy: listening for other
    /// replicas' invalidations.
    pub fn start_background(self: &Arc<Self>) {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            let this = Arc::downgrade(self);
            tokio::spawn(Arc::clone(l2).listen(move |id| {
                let this = this.clone();
                async move {
                    if let Some(this) = this.upgrade() {
                        this.forget(&id).await;
                    }
                }
            }));
        }
    }

    pub async fn handle<B>(
        self: Arc<Self>,
        req: http::Request<B>,
        peer: SocketAddr,
    ) -> Response<Body>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let request_id = parts
            .headers
            .get(&answer::X_REQUEST_ID)
            .filter(|v| ids::accept_request_id(v))
            .cloned()
            .unwrap_or_else(ids::new_request_id);
        let route = route::parse(parts.uri.path());
        let span = tracing::info_span!(
            "request",
            request_id = field::display(request_id.to_str().unwrap_or_default()),
            trace_id = field::Empty,
            method = %parts.method,
            route = route.as_str(),
            task_id = route.task_id().unwrap_or_default(),
            status = field::Empty,
            cache = field::Empty,
            phase = field::Empty,
            upstream_status = field::Empty,
        );
        // Continues the client's trace; the context returned is this request's own span,
        // the parent of the `traceparent` sent upstream.
        let trace = telemetry::attach(&span, parts.headers.get(&TRACEPARENT));
        span.record("trace_id", field::display(trace.trace_id_hex()));
        let (mut resp, outcome) = self
            .serve(&parts, body, peer, route, &request_id, trace)
            .instrument(span.clone())
            .await;
        if parts.method != Method::OPTIONS {
            self.cors.apply(&parts.headers, resp.headers_mut());
        }

        let elapsed = start.elapsed();
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
            method = %parts.method,
            route = route.as_str(),
            task_id = route.task_id().unwrap_or_default(),
            status = resp.status().as_u16(),
            cache = outcome.cache.map(CacheStatus::as_str),
            phase = outcome.phase.map(Phase::as_str),
            coalesced = outcome.coalesced,
            upstream_status = upstream.and_then(|u| u.status),
            upstream_error = upstream.and_then(|u| u.error),
            upstream_ms = upstream.map(|u| u.elapsed.as_secs_f64() * 1e3),
            webhook = outcome.webhook.map(webhook::Outcome::as_str),
            total_ms = elapsed.as_secs_f64() * 1e3,
            "request"
        );
        resp
    }

    async fn serve<B>(
        self: &Arc<Self>,
        req: &Parts,
        body: B,
        peer: SocketAddr,
        route: Route<'_>,
        request_id: &HeaderValue,
        trace: TraceContext,
    ) -> (Response<Body>, Outcome)
    where
        B: HttpBody,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let error = |status, message| {
            let resp = answer::error_response(status, message, request_id);
            (resp, Outcome::default())
        };
        if let Some(problem) = malformed(req) {
            let (mut resp, outcome) = error(StatusCode::BAD_REQUEST, problem);
            resp.headers_mut().insert(header::CONNECTION, CLOSE);
            return (resp, outcome);
        }
        let (id, events) = match route {
            Route::Task(id) => (id, false),
            Route::TaskEvents(id) => (id, true),
            Route::BadId => return error(StatusCode::BAD_REQUEST, "invalid task id"),
            Route::Webhook if self.webhooks.is_some() => {
                return self.webhook(req, body, request_id).await
            }
            Route::Webhook | Route::NotFound => return error(StatusCode::NOT_FOUND, "not found"),
        };
        match req.method {
            Method::GET => {}
            Method::HEAD if !events => {}
            Method::OPTIONS => {
                return (
                    self.cors.options(&req.headers, request_id),
                    Outcome::default(),
                )
            }
            _ => {
                let (mut resp, outcome) =
                    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                resp.headers_mut().insert(header::ALLOW, ALLOW);
                return (resp, outcome);
            }
        }
        if !body.is_end_stream() {
            // Closing is what stops a body from being read as a smuggled next request.
            let (mut resp, outcome) = error(
                StatusCode::BAD_REQUEST,
                "a GET or HEAD request must not carry a body",
            );
            resp.headers_mut().insert(header::CONNECTION, CLOSE);
            return (resp, outcome);
        }
        if let Some(limiter) = &self.rate_limit {
            let client = limit::client_addr(peer, &req.headers, self.trust_forwarded);
            if let Err(wait) = limiter.check(client) {
                let (mut resp, outcome) =
                    error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, answer::retry_after_secs(wait));
                return (resp, outcome);
            }
        }
        if events {
            return self.watch(req, id, request_id).await;
        }

        let found = self.lookup(id, request_id, trace).await;
        if found.coalesced {
            self.metrics.coalesced_wait();
        }
        let resp = found
            .answer
            .respond(&req.method, &req.headers, found.cache, request_id);
        let outcome = Outcome {
            cache: Some(found.cache),
            phase: found.answer.phase,
            upstream: found.upstream,
            coalesced: found.coalesced,
            webhook: None,
        };
        (resp, outcome)
    }

    /// The answer for `id`: from the cache, else from the fetch in flight or a new one —
    /// unless the API asked for patience, when nothing goes upstream.
    async fn lookup(
        self: &Arc<Self>,
        id: &str,
        request_id: &HeaderValue,
        trace: TraceContext,
    ) -> Found {
        if let Some(answer) = self.cache.get(id).await {
            return Found {
                answer,
                cache: CacheStatus::Hit,
                upstream: None,
                coalesced: false,
            };
        }
        if let Some(left) = self.backoff.remaining() {
            let answer = Arc::new(Answer::backoff(left));
            return Found {
                answer,
                cache: CacheStatus::Pass,
                upstream: None,
                coalesced: false,
            };
        }
        let (fetched, coalesced) = self
            .cache
            .fetch_coalesced(id, || {
                let this = Arc::clone(self);
                let id = id.to_owned();
                let request_id = request_id.clone();
                async move {
                    #[cfg(feature = "redis")]
                    if let Some(l2) = &this.l2 {
                        if let Some(answer) = l2.get(&id).await {
                            return Fetch {
                                answer,
                                upstream: None,
                                shared: true,
                            };
                        }
                    }
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
                    #[cfg(feature = "redis")]
                    if let (Some(l2), true) = (&this.l2, answer.is_shared()) {
                        // Written beside the reply, so the client never waits on Redis.
                        let (l2, id, shared) = (Arc::clone(l2), id.clone(), answer.clone());
                        tokio::spawn(async move { l2.put(&id, &shared).await });
                    }
                    Fetch {
                        answer,
                        upstream: Some(report),
                        shared: false,
                    }
                }
                .in_current_span()
            })
            .await;
        match fetched {
            Some(f) => Found {
                answer: f.answer,
                cache: f.cache,
                upstream: f.upstream,
                coalesced,
            },
            // The fetch task died (a panic): nothing to share.
            None => Found {
                answer: Arc::new(Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error",
                )),
                cache: CacheStatus::Pass,
                upstream: None,
                coalesced,
            },
        }
    }

    /// `GET /task/{id}/events`: joins (or starts) the id's watcher.
    async fn watch(
        self: &Arc<Self>,
        req: &Parts,
        id: &str,
        request_id: &HeaderValue,
    ) -> (Response<Body>, Outcome) {
        let last_event_id = req
            .headers
            .get(&LAST_EVENT_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // An EventSource reconnecting after the last event of a finished task gets 204, which
        // tells it to stop reconnecting (the HTML standard's rule for a 204 answer).
        if let (Some(last), Some(cached)) = (&last_event_id, self.cache.get(id).await) {
            if cached.phase.is_some_and(Phase::is_finished)
                && updated_at(&cached.body).as_deref() == Some(last)
            {
                let resp = answer::empty_response(StatusCode::NO_CONTENT, request_id);
                return (
                    resp,
                    Outcome {
                        cache: Some(CacheStatus::Hit),
                        ..Outcome::default()
                    },
                );
            }
        }
        let this = Arc::clone(self);
        let key = id.to_owned();
        let lookup = move || {
            let this = Arc::clone(&this);
            let key = key.clone();
            async move {
                let trace = TraceContext::continue_or_start(None);
                this.lookup(&key, &ids::new_request_id(), trace)
                    .await
                    .answer
            }
        };
        match self.watchers.subscribe(id, last_event_id, lookup) {
            Ok(stream) => {
                let mut resp = Response::new(Either::Right(stream));
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                // Tells nginx-style proxies in front not to buffer the stream.
                h.insert("x-accel-buffering", HeaderValue::from_static("no"));
                h.insert(answer::X_REQUEST_ID.clone(), request_id.clone());
                (resp, Outcome::default())
            }
            Err(_) => (
                answer::error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many tasks watched",
                    request_id,
                ),
                Outcome::default(),
            ),
        }
    }

    /// `POST /webhooks/livepeer`.
    async fn webhook<B>(
        &self,
        req: &Parts,
        body: B,
        request_id: &HeaderValue,
    ) -> (Response<Body>, Outcome)
    where
        B: HttpBody,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let webhooks = self
            .webhooks
            .as_ref()
            .expect("routed here only when configured");
        if req.method != Method::POST {
            let mut resp = answer::error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                request_id,
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return (resp, Outcome::default());
        }
        let too_large = || {
            let mut resp = answer::error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "webhook body too large",
                request_id,
            );
            resp.headers_mut().insert(header::CONNECTION, CLOSE);
            (resp, Outcome::default())
        };
        if body.size_hint().lower() > webhook::MAX_BODY as u64 {
            return too_large();
        }
        let raw = match Limited::new(body, webhook::MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Err(_) => {
                let resp =
                    answer::error_response(StatusCode::BAD_REQUEST, "incomplete body", request_id);
                return (resp, Outcome::default());
            }
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let signature = req.headers.get(&SIGNATURE).map(HeaderValue::as_bytes);
        let (outcome, task) = webhooks.receive(signature, &raw, now_ms);
        self.metrics.webhook(outcome.as_str());
        if let Some(id) = &task {
            self.invalidate(id).await;
            tracing::info!(
                task_id = id.as_str(),
                "webhook: task changed; dropped from the cache"
            );
        }
        let resp = match outcome {
            webhook::Outcome::BadSignature => answer::error_response(
                StatusCode::UNAUTHORIZED,
                "bad webhook signature",
                request_id,
            ),
            webhook::Outcome::Stale => {
                answer::error_response(StatusCode::UNAUTHORIZED, "stale webhook call", request_id)
            }
            _ => answer::empty_response(StatusCode::NO_CONTENT, request_id),
        };
        (
            resp,
            Outcome {
                webhook: Some(outcome),
                ..Outcome::default()
            },
        )
    }
}

/// `status.updatedAt` of a task body, as the SSE event id.
fn updated_at(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let u = v.get("status")?.get("updatedAt")?;
    Some(u.to_string().trim_matches('"').to_owned())
}

/// Request shapes no browser or SDK sends, refused before routing: taskgate is an origin
/// server for a few routes, never a forward proxy, and never switches protocols.
fn malformed(req: &Parts) -> Option<&'static str> {
    let h1 = req.version <= Version::HTTP_11;
    // HTTP/2 requests carry :scheme and :authority, so only HTTP/1 targets must be origin-form.
    if h1 && (req.uri.scheme().is_some() || req.uri.authority().is_some()) {
        return Some("only origin-form request targets are accepted");
    }
    if req.headers.contains_key(header::UPGRADE) {
        return Some("protocol upgrades are not supported");
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() || first.is_some_and(|h| !valid_host(h.as_bytes())) {
        return Some("invalid Host header");
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
    if first.is_none() && req.version == Version::HTTP_11 {
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
