//! The public request path, top to bottom in [`Proxy::handle`], [`Proxy::serve_now`] and
//! [`Proxy::serve_later`]:
//! route → request checks → limits → lookup (cache → back-off → coalesced fetch: the shared
//! level, then the API) → classify → store → respond (+ CORS) → one access event.
//! Watches (`/events`) and webhooks branch off after the request checks and reuse the lookup.

use std::{
    collections::HashSet,
    error::Error as StdError,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, Response, Version};
use http_body_util::{BodyExt, Either, Limited};
use hyper::body::Body as HttpBody;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::{
    answer::{
        respond::{self, full, Body, Head},
        Allow, Answer, Audience, CacheStatus, Error, NoStore, Policy, Side,
    },
    cache::{self, Cache, Fetch, Fetched, Held, SharedLevel},
    clock::unix_ms_now,
    config::Config,
    cors::{Cors, Options},
    ids::{self, TraceContext, TRACEPARENT, X_REQUEST_ID},
    limit::{self, Backoff, ClientSlots, RateLimiter},
    listener::MAX_HEADER_BYTES,
    resource::{self, Key, Kind, Phase},
    route::{self, Route},
    secrets::Secrets,
    sync::lock,
    telemetry::{self, AccessEvent, InRequest, Metrics, RequestFields},
    upstream::{self, FetchError, Reply, SetupError, Upstream, UpstreamReport},
    viewer::{self, Carried},
    watch::{Refused, Watchers},
    webhook::{self, Changed, Webhooks},
};

/// With trusted webhooks, a warning is logged when none has been accepted for this long (or for
/// the trust TTL, when that is longer).
const WEBHOOKS_QUIET: Duration = Duration::from_secs(10 * 60);

static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
static SIGNATURE: HeaderName = HeaderName::from_static("livepeer-signature");

/// Everything one request needs, shared by all connections.
pub struct Proxy {
    upstream: Upstream,
    cache: Arc<Cache>,
    policy: Policy,
    /// The API key, webhook secrets, viewer-token keys and admin token in force.
    secrets: Arc<Secrets>,
    secret_reload_interval: Duration,
    cors: Cors,
    rate_limit: Option<RateLimiter>,
    /// The per-client budget for requests that need the API.
    miss_budget: Option<RateLimiter>,
    /// Fair shares of the upstream slots between clients.
    client_slots: ClientSlots,
    upstream_timeout: Duration,
    trust_forwarded: bool,
    backoff: Backoff,
    watchers: Arc<Watchers>,
    webhooks: Option<Arc<Webhooks>>,
    /// How long a webhook body may take to arrive (`TASKGATE_HEADER_TIMEOUT`).
    webhook_body_timeout: Duration,
    /// Keys being fetched again until the API shows what a webhook announced.
    catching_up: Mutex<HashSet<Key>>,
    started: Instant,
    metrics: Arc<Metrics>,
}

/// What one request came to, for its access event and metrics.
#[derive(Default)]
struct Outcome {
    cache: Option<CacheStatus>,
    phase: Option<Phase>,
    upstream: Option<UpstreamReport>,
    coalesced: bool,
    no_store: Option<NoStore>,
    error: Option<Error>,
    webhook: Option<webhook::Outcome>,
    /// A watch that joined a poller already running.
    watch_shared: bool,
    /// The viewer access check, on task and asset reads.
    access: Option<viewer::Outcome>,
}

impl Outcome {
    /// What saved the API a call, when this request made none of its own: the label of
    /// `taskgate_upstream_calls_avoided_total`.
    fn call_avoided(&self, status: u16) -> Option<&'static str> {
        if self.coalesced {
            return Some("coalesced");
        }
        if self.upstream.is_some() {
            return None; // it made the call
        }
        if self.watch_shared {
            return Some("watch_shared");
        }
        if status == 304 {
            return Some("not_modified");
        }
        match (self.cache, self.error) {
            (Some(CacheStatus::Hit), _) => Some("hit"),
            (Some(CacheStatus::Stale), _) => Some("stale"),
            (_, Some(Error::Backoff(_))) => Some("backoff"),
            (_, Some(e)) if e.side() == Side::Client => Some("refused"),
            _ => None,
        }
    }
}

/// One request as it was asked: what its response and its record need.
struct Asked {
    parts: Parts,
    route: Route,
    request_id: HeaderValue,
    trace_id: String,
    span: tracing::Span,
    start: Instant,
}

/// How far [`Proxy::serve_now`] got. Returned once per request and taken apart at once: a
/// box for the large answered variant would cost a hit an allocation.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// A hit, or a preflight.
    Answered((Head, Body)),
    Later(Later),
}

/// What a request still waits for, in its boxed future ([`Proxy::serve_later`]).
enum Later {
    /// A webhook, whose body is still to be read.
    Webhook,
    /// A watch of `key`.
    Watch { key: Key, client: IpAddr },
    /// No fresh answer for `key` here: one is fetched, or joined.
    Miss {
        key: Key,
        client: IpAddr,
        stale: Option<Arc<Answer>>,
        audience: Audience,
    },
}

/// A request's response: [`Proxy::handle`]'s answer at once, or the future that will give it.
pub enum Handled<F> {
    Now(Option<Response<Body>>),
    Later(Pin<Box<F>>),
}

impl<F: Future<Output = Response<Body>>> Future for Handled<F> {
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        match self.get_mut() {
            Handled::Now(resp) => Poll::Ready(resp.take().expect("polled after it completed")),
            Handled::Later(future) => future.as_mut().poll(cx),
        }
    }
}

/// The head and body of what the cache or the API gave, and the request's outcome from it.
fn answer_found(req: &Parts, found: Found, audience: Audience, out: &mut Outcome) -> (Head, Body) {
    let (head, bytes) = found
        .answer
        .head_for(&req.method, &req.headers, found.cache, audience);
    *out = Outcome {
        access: out.access,
        cache: Some(found.cache),
        phase: found.answer.phase,
        upstream: found.upstream,
        coalesced: found.coalesced,
        no_store: found.no_store.filter(|_| found.cache == CacheStatus::Pass),
        error: found.answer.error,
        webhook: None,
        watch_shared: false,
    };
    (head, full(bytes))
}

/// An answer as one lookup found it.
struct Found {
    answer: Arc<Answer>,
    cache: CacheStatus,
    upstream: Option<UpstreamReport>,
    coalesced: bool,
    no_store: Option<NoStore>,
}

impl Found {
    fn local(answer: Arc<Answer>, cache: CacheStatus) -> Self {
        Self {
            no_store: answer.no_store(),
            answer,
            cache,
            upstream: None,
            coalesced: false,
        }
    }

    /// What a fetch gave, or the `stale` answer if the fetch failed and there is one.
    fn fetched(f: Fetched, coalesced: bool, stale: Option<Arc<Answer>>) -> Self {
        if let Some(stale) = stale.filter(|_| f.answer.is_upstream_failure()) {
            // The failure was logged where it happened; the client gets what it had.
            return Self {
                answer: stale,
                cache: CacheStatus::Stale,
                upstream: f.upstream,
                coalesced,
                no_store: None,
            };
        }
        Self {
            answer: f.answer,
            cache: f.cache,
            upstream: f.upstream,
            coalesced,
            no_store: f.no_store,
        }
    }
}

impl Proxy {
    pub fn new(cfg: &Config) -> Result<Self, SetupError> {
        let metrics = Arc::new(Metrics::new());
        let secrets =
            Arc::new(Secrets::new(cfg, reload_recorder(&metrics)).map_err(|e| SetupError(e.0))?);
        let webhooks = (cfg.webhook_secret.is_some() || cfg.webhook_secret_file.is_some())
            .then(|| Arc::new(Webhooks::new(&secrets.current().webhook)));
        if let Some(hooks) = &webhooks {
            let hooks = Arc::clone(hooks);
            secrets.on_change(move |now| hooks.set_secrets(&now.webhook));
        }
        let namespace = cfg
            .redis_namespace
            .clone()
            .unwrap_or_else(|| cache::namespace(&cfg.upstream_url, cfg.redact, &cfg.api_key));
        let shared = SharedLevel::new(
            cfg.redis_url.as_ref(),
            &namespace,
            cfg.redis_timeout,
            Arc::clone(&metrics),
        )
        .map_err(SetupError)?;
        Ok(Self {
            upstream: Upstream::new(cfg, Arc::clone(&secrets))?,
            cache: Arc::new(Cache::new(cfg.cache_max_bytes, cfg.stale_if_error, shared)),
            policy: Policy {
                completed: cfg.ttl_completed,
                failed: cfg.ttl_failed,
                asset_ready: cfg.ttl_asset_ready,
                not_found: cfg.ttl_not_found,
                pending: cfg.ttl_pending,
                trusted_unfinished: trusted_webhooks(cfg),
                redact: cfg.redact,
            },
            secrets,
            secret_reload_interval: cfg.secret_reload_interval,
            cors: Cors::new(cfg.cors_origins.clone()),
            rate_limit: RateLimiter::new(cfg.rate_limit, cfg.rate_burst),
            miss_budget: RateLimiter::new(cfg.miss_rate, cfg.miss_burst),
            client_slots: ClientSlots::new(cfg.upstream_concurrency / 4),
            upstream_timeout: cfg.upstream_timeout,
            trust_forwarded: cfg.trust_forwarded,
            backoff: Backoff::default(),
            watchers: Arc::new(Watchers::new(
                cfg.watch_max,
                cfg.watch_max_per_client,
                cfg.watch_interval,
                metrics.events_sent(),
            )),
            webhooks,
            webhook_body_timeout: cfg.header_timeout,
            catching_up: Mutex::default(),
            started: Instant::now(),
            metrics,
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    /// The secrets in force (SIGHUP re-reads them through this).
    pub fn secrets(&self) -> &Arc<Secrets> {
        &self.secrets
    }

    /// Drops a key everywhere taskgate keeps it — memory, the shared level, and through it
    /// every other replica's memory — and makes its watchers fetch it again.
    pub async fn invalidate(&self, key: Key) {
        self.cache.shared().invalidate(key).await;
        self.forget(key);
    }

    /// Drops a key from this replica only (another replica published its invalidation).
    fn forget(&self, key: Key) {
        self.cache.invalidate(&key);
        self.watchers.refresh(&key);
    }

    /// Time since the last accepted webhook (since start-up when none yet); `None` when the
    /// webhook route is off.
    pub fn webhook_age(&self) -> Option<Duration> {
        let webhooks = self.webhooks.as_ref()?;
        Some(match webhooks.last_accepted_ms() {
            Some(ms) => Duration::from_millis(unix_ms_now().saturating_sub(ms)),
            None => self.started.elapsed(),
        })
    }

    /// Starts the background work that lives as long as the proxy: listening for other
    /// replicas' invalidations, and watching that trusted webhooks keep arriving.
    pub fn start_background(self: &Arc<Self>) {
        self.secrets.spawn_poller(self.secret_reload_interval);
        if !self.policy.trusted_unfinished.is_zero() {
            // Unfinished answers are kept until a webhook names them: if webhooks stop, pages
            // see progress only every trust TTL. Say so before users notice.
            let quiet = self.policy.trusted_unfinished.max(WEBHOOKS_QUIET);
            let this = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    every.tick().await;
                    let Some(this) = this.upgrade() else { return };
                    if let Some(age) = this.webhook_age().filter(|age| *age > quiet) {
                        tracing::warn!(
                            seconds = age.as_secs(),
                            "no webhook accepted for a long while, with TASKGATE_WEBHOOK_TRUST_TTL on: \
                             check the Studio webhook (unfinished answers refresh only every trust TTL)"
                        );
                    }
                }
            });
        }
        let this = Arc::downgrade(self);
        self.cache.shared().listen(move |key| {
            let this = this.clone();
            async move {
                if let Some(this) = this.upgrade() {
                    this.forget(key);
                }
            }
        });
    }

    /// One request, start to end: serve it, add the request's own headers, record it once.
    ///
    /// Everything up to the cache lookup is done here, as hyper hands the request over: a hit
    /// (or a refusal) is answered at once, and the returned future is ready. Why: right after
    /// taking a request, hyper reads ahead on the connection (to notice a client that hung
    /// up) before it polls the request's future, and its read buffer cannot be reused while
    /// any part of the request is alive; a hit answered inside a future made it allocate a
    /// new 8 KiB buffer for every request. What needs to wait (a fetch, a watch, a webhook's
    /// body) goes on in a boxed future, which is then the only thing hyper keeps and moves.
    pub fn handle<B>(
        self: Arc<Self>,
        req: http::Request<B>,
        peer: SocketAddr,
    ) -> Handled<impl Future<Output = Response<Body>> + Send>
    where
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let request_id = parts
            .headers
            .get(&X_REQUEST_ID)
            .filter(|v| ids::accept_request_id(v))
            .cloned()
            .unwrap_or_else(ids::new_request_id);
        let route = route::parse(parts.uri.path());
        let traceparent = parts.headers.get(&TRACEPARENT);
        // Without an exporter the ids are known before the span: given at its creation, the
        // trace id costs no `record` (which rewrites the span's fields for the log).
        let early =
            (!telemetry::spans_exported()).then(|| TraceContext::continue_or_start(traceparent));
        let early_id = early.as_ref().map(TraceContext::trace_id_hex);
        // Without a span when only the JSON log would see it: `InRequest` below keeps its
        // fields for events logged meanwhile (telemetry/request.rs).
        let light = !telemetry::spans_needed();
        let span = if light {
            tracing::Span::none()
        } else {
            telemetry::request_span(&request_id, early_id.as_deref(), &parts.method, route)
        };
        // Continues the client's trace; the context returned is this request's own span,
        // the parent of the `traceparent` sent upstream.
        let (trace, trace_id) = match early.zip(early_id) {
            Some(known) => known,
            None => {
                let trace = telemetry::attach(&span, traceparent);
                let trace_id = trace.trace_id_hex();
                span.record("trace_id", trace_id.as_str());
                (trace, trace_id)
            }
        };

        let mut outcome = Outcome::default();
        let fields = light.then(|| {
            Arc::new(RequestFields {
                request_id: request_id.clone(),
                trace_id: trace_id.clone(),
                method: parts.method.clone(),
                route,
            })
        });
        let asked = Asked {
            parts,
            route,
            request_id,
            trace_id,
            span,
            start,
        };
        let now = asked.span.in_scope(|| {
            telemetry::in_request(fields.as_ref(), || {
                self.serve_now(&asked.parts, &body, peer, route, &mut outcome)
            })
        });
        let served = match now {
            Ok(Step::Answered(served)) => Ok(served),
            Err(error) => Err(error),
            Ok(Step::Later(step)) => {
                return Handled::Later(Box::pin(async move {
                    let a = &asked;
                    let later = self.serve_later(
                        step,
                        &a.parts,
                        body,
                        peer,
                        &a.request_id,
                        trace,
                        &mut outcome,
                    );
                    let served = InRequest::shared(fields, later.instrument(a.span.clone())).await;
                    self.finish(served, a, outcome)
                }));
            }
        };
        let resp = self.finish(served, &asked, outcome);
        Handled::Now(Some(resp))
    }

    /// The response, from what serving came to, and the request's record.
    fn finish(
        &self,
        served: Result<(Head, Body), Error>,
        asked: &Asked,
        mut outcome: Outcome,
    ) -> Response<Body> {
        let (mut head, body) = served.unwrap_or_else(|error| {
            outcome.error = Some(error);
            (Head::error(error), full(error.body()))
        });
        if asked.parts.method != Method::OPTIONS {
            head.cors = self.cors.for_request(&asked.parts.headers);
        }
        let resp = respond::build(head, body, &asked.request_id);
        self.record(asked, resp.status().as_u16(), &outcome);
        resp
    }

    /// The steps of one request that need no waiting, in order: each refusal is an [`Error`]
    /// that knows its side; a hit is [`Step::Answered`]; the rest is for [`Proxy::serve_later`].
    fn serve_now<B: HttpBody>(
        &self,
        req: &Parts,
        body: &B,
        peer: SocketAddr,
        route: Route,
        out: &mut Outcome,
    ) -> Result<Step, Error> {
        // Request checks.
        check_request_shape(req)?;
        let (key, events) = match route {
            Route::Read(key) => (key, false),
            Route::Events(key) => (key, true),
            Route::BadId(kind) => return Err(Error::BadId(kind)),
            Route::Webhook if self.webhooks.is_some() => return Ok(Step::Later(Later::Webhook)),
            Route::Webhook | Route::NotFound => return Err(Error::NoRoute),
        };
        match req.method {
            Method::GET => {}
            Method::HEAD if !events => {}
            Method::OPTIONS => return self.options(&req.headers).map(Step::Answered),
            _ => return Err(Error::Method(Allow::Read)),
        }
        if !body.is_end_stream() {
            return Err(Error::BodyOnGet);
        }
        // Limits.
        let client = limit::client_addr(peer, &req.headers, self.trust_forwarded);
        self.check_rate(client)?;
        // Viewer access: before anything that could answer from the cache, join a fetch or
        // call the API.
        let audience = self.check_access(req, key, out)?;
        if events {
            return Ok(Step::Later(Later::Watch { key, client }));
        }
        // Lookup; on a miss, classify and store (inside the cache) later.
        let stale = match self.cached(&key) {
            Ok(hit) => return Ok(Step::Answered(answer_found(req, hit, audience, out))),
            Err(stale) => stale,
        };
        Ok(Step::Later(Later::Miss {
            key,
            client,
            stale,
            audience,
        }))
    }

    /// The steps [`Proxy::serve_now`] left for later.
    #[allow(clippy::too_many_arguments)]
    async fn serve_later<B>(
        self: &Arc<Self>,
        step: Later,
        req: &Parts,
        body: B,
        peer: SocketAddr,
        request_id: &HeaderValue,
        trace: TraceContext,
        out: &mut Outcome,
    ) -> Result<(Head, Body), Error>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        match step {
            Later::Webhook => self.webhook(req, body, peer, out).await,
            Later::Watch { key, client } => self.watch(req, key, client, out).await,
            Later::Miss {
                key,
                client,
                stale,
                audience,
            } => {
                let found = self
                    .lookup_miss(key, stale, Some(client), request_id, trace)
                    .await?;
                Ok(answer_found(req, found, audience, out))
            }
        }
    }

    /// The viewer token of a read of `key`, judged: who the answer is for, or why it is
    /// refused. The token is never logged: only the outcome is.
    fn check_access(&self, req: &Parts, key: Key, out: &mut Outcome) -> Result<Audience, Error> {
        let secrets = self.secrets.current();
        let Some(keys) = &secrets.access else {
            out.access = Some(viewer::Outcome::Off);
            return Ok(Audience::Anyone);
        };
        let outcome = match viewer::carried(&req.headers, req.uri.query()) {
            Carried::Ambiguous => {
                out.access = Some(viewer::Outcome::Invalid);
                return Err(Error::AccessTokenTwice);
            }
            Carried::None => viewer::Outcome::Missing,
            Carried::Token(token) => keys.check(Some(token), key.id()),
        };
        out.access = Some(outcome);
        match outcome {
            viewer::Outcome::Granted => Ok(Audience::TokenHolder),
            viewer::Outcome::Off => Ok(Audience::Anyone),
            viewer::Outcome::Missing => Err(Error::AccessTokenMissing),
            viewer::Outcome::Invalid => Err(Error::AccessTokenInvalid),
            viewer::Outcome::Forbidden => Err(Error::AccessForbidden),
        }
    }

    fn check_rate(&self, client: IpAddr) -> Result<(), Error> {
        let Some(limiter) = &self.rate_limit else {
            return Ok(());
        };
        limiter.check(client).map_err(Error::RateLimited)
    }

    /// Spends one token of `client`'s budget for requests that need the API.
    fn spend_miss_budget(&self, client: IpAddr) -> Result<(), Error> {
        let Some(budget) = &self.miss_budget else {
            return Ok(());
        };
        budget.check(client).map_err(Error::MissBudget)
    }

    /// The answer for `key`: from the cache, else from the fetch in flight or a new one —
    /// unless the API asked for patience, when nothing goes upstream. A request of `client`
    /// that would start a fetch spends its miss budget first (a watcher's poll, with no
    /// client, was paid for when the watch began).
    async fn lookup(
        self: &Arc<Self>,
        key: Key,
        client: Option<IpAddr>,
        request_id: &HeaderValue,
        trace: TraceContext,
    ) -> Result<Found, Error> {
        let stale = match self.cached(&key) {
            Ok(hit) => return Ok(hit),
            Err(stale) => stale,
        };
        self.lookup_miss(key, stale, client, request_id, trace)
            .await
    }

    /// This replica's fresh answer for `key`, as a hit (`Ok`); else (`Err`) the stale answer
    /// it holds, if any, for the fetch to fall back on. One place for what counts as a hit,
    /// for requests ([`Proxy::serve_now`]) and for watchers ([`Proxy::lookup`]) alike.
    fn cached(&self, key: &Key) -> Result<Found, Option<Arc<Answer>>> {
        match self.cache.lookup(key) {
            Held::Fresh(answer) => Ok(Found::local(answer, CacheStatus::Hit)),
            Held::Stale(answer) => Err(Some(answer)),
            Held::Nothing => Err(None),
        }
    }

    /// The rest of [`Proxy::lookup`] when the cache held no fresh answer.
    async fn lookup_miss(
        self: &Arc<Self>,
        key: Key,
        stale: Option<Arc<Answer>>,
        client: Option<IpAddr>,
        request_id: &HeaderValue,
        trace: TraceContext,
    ) -> Result<Found, Error> {
        if let Some(left) = self.backoff.remaining() {
            return Ok(match stale {
                Some(stale) => {
                    tracing::warn!(reason = "backoff", "serving a stale answer");
                    Found::local(stale, CacheStatus::Stale)
                }
                None => Found::local(Arc::new(Answer::backoff(left)), CacheStatus::Pass),
            });
        }
        // A request that would start a fetch first takes a slot of its client's share, and
        // only then leads: while it waits behind its own client's other fetches, another
        // client's request for the same id leads with its own share rather than joining a
        // fetch held back in someone else's queue. It still joins a fetch of the id that
        // starts while it waits.
        let mut share = None;
        if let Some(client) = client.filter(|_| !self.cache.is_in_flight(&key)) {
            self.spend_miss_budget(client)?;
            share = match self.client_slots.try_acquire(client) {
                Some(permit) => Some(permit),
                None => match self.wait_to_lead(key, client).await {
                    Ok(share) => share,
                    Err(waited) => {
                        let failed = self.classify(key, Err(FetchError::Saturated), waited);
                        let fetched = Fetched {
                            no_store: failed.answer.no_store(),
                            answer: Arc::new(failed.answer),
                            cache: CacheStatus::Pass,
                            upstream: Some(failed.upstream),
                        };
                        return Ok(Found::fetched(fetched, false, stale));
                    }
                },
            };
        }
        let this = Arc::clone(self);
        let request_id = request_id.clone();
        let (fetched, coalesced) = self
            .cache
            .fetch_coalesced(key, move || {
                this.fetch(key, client, share, request_id, trace)
                    .in_current_span()
            })
            .await;
        match fetched {
            Some(f) => {
                if coalesced {
                    self.metrics.coalesced_wait();
                }
                if f.no_store == Some(NoStore::Behind) && !coalesced {
                    Arc::clone(self).catch_up(key);
                }
                Ok(Found::fetched(f, coalesced, stale))
            }
            // The fetch died (a panic): nothing to share.
            None => Ok(Found::local(
                Arc::new(Answer::error(Error::Internal)),
                CacheStatus::Pass,
            )),
        }
    }

    /// Waits for a slot of `client`'s share to lead a fetch of `key` (`Some`), unless a fetch
    /// of `key` starts meanwhile, to be joined (`None`). `Err`: no slot came free within the
    /// upstream timeout, after waiting that long.
    async fn wait_to_lead(
        &self,
        key: Key,
        client: IpAddr,
    ) -> Result<Option<OwnedSemaphorePermit>, Duration> {
        let waited = Instant::now();
        let watch = self.cache.watch_start(key);
        let acquire = self.client_slots.acquire(client, self.upstream_timeout);
        tokio::pin!(acquire);
        loop {
            let started = watch.started();
            tokio::pin!(started);
            started.as_mut().enable();
            if self.cache.is_in_flight(&key) {
                return Ok(None);
            }
            tokio::select! {
                permit = &mut acquire => return permit.map(Some).ok_or(waited.elapsed()),
                () = &mut started => {}
            }
        }
    }

    /// After an answer older than a webhook announced: fetch `key` again after a short,
    /// growing delay until the API shows the announced version (and it is stored) or the trust
    /// TTL has passed. One loop per key at a time.
    fn catch_up(self: Arc<Self>, key: Key) {
        if !lock(&self.catching_up).insert(key) {
            return;
        }
        tokio::spawn(async move {
            let deadline = Instant::now() + self.policy.trusted_unfinished;
            let mut delay = Duration::from_millis(250);
            while Instant::now() + delay < deadline {
                tokio::time::sleep(delay).await;
                if self.cache.get(&key).is_some() {
                    break;
                }
                let trace = TraceContext::continue_or_start(None);
                let _ = self.lookup(key, None, &ids::new_request_id(), trace).await;
                if self.cache.get(&key).is_some() {
                    break;
                }
                delay *= 2;
            }
            lock(&self.catching_up).remove(&key);
        });
    }

    /// The one call to the API for `key`, classified. Runs as the coalesced fetch (in the
    /// leading request's task, or its own once that request is gone), within `client`'s fair
    /// share of the upstream slots.
    async fn fetch(
        self: Arc<Self>,
        key: Key,
        client: Option<IpAddr>,
        share: Option<OwnedSemaphorePermit>,
        request_id: HeaderValue,
        trace: TraceContext,
    ) -> Fetch {
        let _in_flight = self.metrics.upstream_started();
        let (reply, elapsed) = upstream::timed(async {
            // Taken before leading, except when the fetch this request meant to join ended
            // in between: then here, so that no fetch of a client goes outside its share.
            let _share = match (share, client) {
                (Some(share), _) => Some(share),
                (None, Some(client)) => Some(
                    self.client_slots
                        .acquire(client, self.upstream_timeout)
                        .await
                        .ok_or(FetchError::Saturated)?,
                ),
                (None, None) => None,
            };
            self.upstream
                .fetch(key, &request_id, trace.to_header())
                .await
        })
        .await;
        self.classify(key, reply, elapsed)
    }

    /// An upstream exchange (or the failure to have one), logged, counted and made an answer.
    fn classify(&self, key: Key, reply: Result<Reply, FetchError>, elapsed: Duration) -> Fetch {
        let report = UpstreamReport::of(&reply, elapsed);
        log_upstream_fault(&report);
        self.metrics.upstream_finished(&report);
        if let Ok(r) = &reply {
            if r.status == http::StatusCode::TOO_MANY_REQUESTS {
                self.backoff.start(r.retry_after.as_ref());
            }
            if r.status == http::StatusCode::UNAUTHORIZED {
                // The key may have been rotated under us: re-read its file (rate-limited),
                // off the async workers.
                let secrets = Arc::clone(&self.secrets);
                tokio::task::spawn_blocking(move || secrets.api_key_refused());
            }
        }
        let api_key = self.secrets.current().api_key.clone();
        let answer =
            Answer::from_upstream(key.kind(), reply, &self.policy, api_key.expose().as_bytes());
        Fetch {
            answer,
            upstream: report,
        }
    }

    /// `OPTIONS` on a resource path: a CORS preflight, or a plain `204` with `Allow`.
    fn options(&self, headers: &HeaderMap) -> Result<(Head, Body), Error> {
        let mut head = Head::new(http::StatusCode::NO_CONTENT);
        match self.cors.options(headers) {
            Options::Plain => {}
            Options::Preflight(cors) => head.cors = cors,
            Options::Refused(cors) => {
                let mut head = Head::error(Error::PreflightRefused);
                head.cors = cors;
                return Ok((head, full(Error::PreflightRefused.body())));
            }
        }
        head.allow = Some(Allow::Read);
        Ok((head, full(Bytes::new())))
    }

    /// `GET /{kind}/{id}/events`: joins (or starts) the key's watcher.
    async fn watch(
        self: &Arc<Self>,
        req: &Parts,
        key: Key,
        client: IpAddr,
        out: &mut Outcome,
    ) -> Result<(Head, Body), Error> {
        let last_event_id = req
            .headers
            .get(&LAST_EVENT_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // An EventSource reconnecting after the last event of a finished resource gets 204,
        // which tells it to stop reconnecting (the HTML standard's rule for a 204 answer).
        if let (Some(last), Some(cached)) = (&last_event_id, self.cache.get(&key)) {
            if cached.phase.is_some_and(Phase::is_finished)
                && resource::updated_at(&cached.body).as_deref() == Some(last)
            {
                out.cache = Some(CacheStatus::Hit);
                return Ok((Head::new(http::StatusCode::NO_CONTENT), full(Bytes::new())));
            }
        }
        // Starting a poller costs the API a call per interval: it spends the miss budget.
        out.watch_shared = self.watchers.is_watched(&key);
        if !out.watch_shared && self.cache.get(&key).is_none() {
            self.spend_miss_budget(client)?;
        }
        let this = Arc::clone(self);
        let lookup = move || {
            let this = Arc::clone(&this);
            async move {
                let trace = TraceContext::continue_or_start(None);
                match this.lookup(key, None, &ids::new_request_id(), trace).await {
                    Ok(found) => found.answer,
                    Err(error) => Arc::new(Answer::error(error)),
                }
            }
        };
        let stream = self
            .watchers
            .subscribe(key, client, last_event_id, lookup)
            .map_err(|refused| match refused {
                Refused::TooManyIds => Error::WatchLimit,
                Refused::TooManyFromClient => Error::WatchClientLimit,
            })?;
        let mut head = Head::new(http::StatusCode::OK);
        head.event_stream = true;
        Ok((head, Either::Right(stream)))
    }

    /// `POST /webhooks/livepeer`.
    async fn webhook<B>(
        &self,
        req: &Parts,
        body: B,
        peer: SocketAddr,
        out: &mut Outcome,
    ) -> Result<(Head, Body), Error>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let webhooks = self
            .webhooks
            .as_ref()
            .expect("routed here only when configured");
        if req.method != Method::POST {
            return Err(Error::Method(Allow::Post));
        }
        // The same per-client budget as reads: each call can cost an HMAC of up to 64 KiB.
        self.check_rate(limit::client_addr(peer, &req.headers, self.trust_forwarded))?;
        let signature = req.headers.get(&SIGNATURE).map(HeaderValue::as_bytes);
        let header = match webhooks.check_header(signature, unix_ms_now()) {
            Ok(header) => header,
            Err(refused) => {
                self.metrics.webhook(refused.as_str());
                out.webhook = Some(refused);
                // The body is left unread: the answer closes the connection.
                return Err(match refused {
                    webhook::Outcome::Stale => Error::StaleWebhook,
                    _ => Error::BadSignature,
                });
            }
        };
        if body.size_hint().lower() > webhook::MAX_BODY as u64 {
            return Err(Error::BodyTooLarge);
        }
        let read = Limited::new(body, webhook::MAX_BODY).collect();
        let raw = match tokio::time::timeout(self.webhook_body_timeout, read).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Error::BodyTooLarge)
            }
            Ok(Err(_)) => return Err(Error::IncompleteBody),
            Err(_) => return Err(Error::BodyTimeout),
        };
        let (mut outcome, mut changed) = webhooks.receive(&header, &raw, unix_ms_now());
        if let Some(first) = &changed {
            // New to this replica; Studio's retry may have reached another one first.
            if !self
                .cache
                .shared()
                .claim_event(&first.event_id, webhook::SEEN_TTL)
                .await
            {
                (outcome, changed) = (webhook::Outcome::Duplicate, None);
            }
        }
        self.metrics.webhook(outcome.as_str());
        out.webhook = Some(outcome);
        if let Some(Changed { key, version, .. }) = changed {
            // With trusted webhooks, announced first, so a fetch that lands after the
            // invalidation with an answer older than the event is not stored.
            if let Some(version) = version.filter(|_| !self.policy.trusted_unfinished.is_zero()) {
                self.cache.announce(&key, version);
            }
            self.invalidate(key).await;
            tracing::info!(
                kind = key.kind().as_str(),
                id = key.id(),
                version,
                "webhook: resource changed; dropped from the cache"
            );
        }
        match outcome {
            webhook::Outcome::BadSignature => Err(Error::BadSignature),
            webhook::Outcome::Stale => Err(Error::StaleWebhook),
            webhook::Outcome::BadEventId => Err(Error::BadEventId),
            _ => Ok((Head::new(http::StatusCode::NO_CONTENT), full(Bytes::new()))),
        }
    }

    /// Metrics, span fields and the one access event of a request.
    fn record(&self, asked: &Asked, status: u16, outcome: &Outcome) {
        let Asked {
            parts,
            route,
            request_id,
            trace_id,
            span,
            start,
        } = asked;
        let (method, route, elapsed) = (&parts.method, *route, start.elapsed());
        let kind = route.kind().map(Kind::as_str);
        let reason = outcome.error.map(Error::reason);
        // For the exported span's attributes. The log needs none of them: no event inside
        // the span follows, and the access event below carries them all.
        if telemetry::spans_exported() {
            span.record("status", status);
            if let Some(cache) = outcome.cache {
                span.record("cache", cache.as_str());
            }
            if let Some(phase) = outcome.phase {
                span.record("phase", phase.as_str());
            }
            if let Some(status) = outcome.upstream.and_then(|u| u.status) {
                span.record("upstream_status", status);
            }
            if let Some(reason) = reason {
                span.record("reason", reason);
            }
        }
        self.metrics.request(
            route.as_str(),
            kind,
            status,
            outcome.cache,
            reason,
            outcome.call_avoided(status),
            elapsed,
        );
        if let Some(access) = outcome.access {
            self.metrics.access(access);
        }
        let access = outcome.access.map(viewer::Outcome::as_str);
        let upstream = outcome.upstream;
        telemetry::access(|| AccessEvent {
            request_id: request_id.to_str().unwrap_or_default(),
            trace_id,
            method: method.as_str(),
            route: route.as_str(),
            kind,
            id: route.id(),
            task_id: route.task_id(),
            status,
            cache: outcome.cache.map(CacheStatus::as_str),
            phase: outcome.phase.map(Phase::as_str),
            not_cached: outcome.no_store.map(NoStore::as_str),
            reason,
            side: outcome.error.map(|e| e.side().as_str()),
            coalesced: outcome.coalesced,
            upstream_status: upstream.and_then(|u| u.status),
            upstream_error: upstream.and_then(|u| u.error),
            upstream_ms: upstream.map(|u| u.elapsed.as_secs_f64() * 1e3),
            webhook: outcome.webhook.map(webhook::Outcome::as_str),
            access,
            total_ms: elapsed.as_secs_f64() * 1e3,
        });
    }
}

/// `TASKGATE_WEBHOOK_TRUST_TTL`, when webhooks are trusted: a webhook secret is set and the TTL
/// is above zero. Else zero: unfinished work passes through.
fn trusted_webhooks(cfg: &Config) -> Duration {
    if cfg.webhook_secret.is_some() || cfg.webhook_secret_file.is_some() {
        cfg.webhook_trust_ttl
    } else {
        Duration::ZERO
    }
}

/// Counts secret reloads in `taskgate_secret_reloads_total`.
fn reload_recorder(metrics: &Arc<Metrics>) -> crate::secrets::Recorder {
    let metrics = Arc::clone(metrics);
    Box::new(move |setting, outcome| metrics.secret_reload(setting, outcome))
}

/// Request shapes no browser or SDK sends, refused before anything else: taskgate is an
/// origin server for a few routes, never a forward proxy, and never switches protocols.
fn check_request_shape(req: &Parts) -> Result<(), Error> {
    // hyper bounds its read buffer, but a head that arrives in one large read can still parse
    // whole; the limit is enforced here on what was parsed (each line counted with its CRLF).
    let head_bytes = req.method.as_str().len()
        + target_len(&req.uri)
        + 12
        + req
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
            .sum::<usize>();
    if head_bytes > MAX_HEADER_BYTES {
        return Err(Error::HeadTooLarge);
    }
    let h1 = req.version <= Version::HTTP_11;
    // HTTP/2 requests carry :scheme and :authority, so only HTTP/1 targets must be origin-form.
    if h1 && (req.uri.scheme().is_some() || req.uri.authority().is_some()) {
        return Err(Error::Malformed(
            "only origin-form request targets are accepted",
        ));
    }
    if req.headers.contains_key(header::UPGRADE) {
        return Err(Error::Malformed("protocol upgrades are not supported"));
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() || first.is_some_and(|h| !valid_host(h.as_bytes())) {
        return Err(Error::Malformed("invalid Host header"));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
    if first.is_none() && req.version == Version::HTTP_11 {
        return Err(Error::Malformed("missing Host header"));
    }
    Ok(())
}

/// The length of the request target as the client wrote it (`Uri`'s `Display`, without
/// writing it out).
fn target_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |q| "?".len() + q.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_measured_as_it_would_be_written() {
        let targets = [
            "/task/abc",
            "/api/task/abc?x=1&y=%20",
            "/?",
            "*",
            "http://example.com/task/a?q",
            "https://user@example.com:8443",
            "example.com:443",
            "/",
        ];
        for target in targets {
            let uri: http::Uri = target.parse().expect(target);
            assert_eq!(target_len(&uri), uri.to_string().len(), "{target}");
        }
    }
}
