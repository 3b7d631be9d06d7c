//! Prometheus metrics, every name prefixed `taskgate_`, served on the admin listener.
//!
//! Label values come from the same `as_str()` as the log fields, and no label is unbounded:
//! never a task or asset id, only routes, status codes, cache outcomes and error kinds.

use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{answer::CacheStatus, upstream::UpstreamReport, viewer};

/// Buckets from 50 µs to 10 s: a cache hit answers in well under a millisecond, an upstream
/// round trip takes tens to hundreds of milliseconds, and the timeout is seconds.
const LATENCY_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
    cache: &'static str,
    /// `task` or `asset`, or `none` for routes that name no resource.
    kind: &'static str,
    /// Why the request was refused or failed (`answer::Error::reason`), or `none`.
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct L2Labels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    /// The setting as a variable name, e.g. `TASKGATE_API_KEY_FILE`: never its value.
    setting: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    status_class: &'static str,
    error: &'static str,
}

pub struct Metrics {
    /// Tells this set of metrics from another in the same process (tests start several), for
    /// the handles each thread keeps ([`RECENT`]).
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<CacheLabel, Histogram, fn() -> Histogram>,
    upstream: Family<UpstreamLabels, Counter>,
    upstream_seconds: Histogram,
    coalesced: Counter,
    upstream_in_flight: Gauge,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    watch_ids: Gauge,
    watch_streams: Gauge,
    webhook_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    events_sent: Counter,
    webhooks: Family<OutcomeLabel, Counter>,
    l2: Family<L2Labels, Counter>,
    l2_seconds: Histogram,
    avoided: Family<ReasonLabel, Counter>,
    access: Family<OutcomeLabel, Counter>,
    /// `access`'s series, one per outcome, made on first use: one is counted per request,
    /// and the family's lookup hashes the label set under a lock (about 270 instructions).
    access_kept: [OnceLock<Counter>; viewer::Outcome::ALL.len()],
    secret_reloads: Family<ReloadLabels, Counter>,
    /// `taskgate_log_events_dropped_total`, brought up to the log writer's own count at each
    /// render; `log_dropped_seen` is the count it last reached.
    log_dropped: Counter,
    log_dropped_seen: AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The series one request's labels resolve to.
struct RequestHandles {
    requests: Counter,
    seconds: Histogram,
    avoided: Option<Counter>,
}

/// A label set used lately on this thread, with its series.
struct Recent {
    metrics: u64,
    labels: RequestLabels,
    avoided: Option<&'static str>,
    handles: RequestHandles,
}

/// How many label sets each thread keeps. Few are in use at a time: most requests of a
/// running proxy are hits or passes of the same route and status.
const RECENT_MAX: usize = 8;

thread_local! {
    /// The series of the label sets this thread used lately. A family's `get_or_create` takes
    /// a lock and SipHashes the whole label set, three times per request; this is a short
    /// scan of a few `&'static str` instead (about 1.1k fewer instructions per cache hit,
    /// bench/instructions.sh). Bounded by [`RECENT_MAX`]; a series is never removed from its
    /// family, so a kept handle stays the one rendered.
    static RECENT: RefCell<Vec<Recent>> = const { RefCell::new(Vec::new()) };
}

static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(0);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("taskgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Public requests by route, status, cache outcome (HIT, MISS, PASS, STALE, none), resource kind and refusal reason",
            requests.clone(),
        );
        let request_seconds: Family<CacheLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time to answer a public request, by cache outcome",
            request_seconds.clone(),
        );
        let upstream = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Upstream fetches by status class (2xx..5xx, none) and error kind (timeout, connect, reset, too_large, saturated, none)",
            upstream.clone(),
        );
        let upstream_seconds = latency_histogram();
        registry.register(
            "upstream_duration_seconds",
            "Time of one upstream exchange, headers and body",
            upstream_seconds.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced_waits",
            "Requests that waited for another request's upstream fetch instead of making their own",
            coalesced.clone(),
        );
        let upstream_in_flight = Gauge::default();
        registry.register(
            "upstream_in_flight",
            "Upstream fetches in flight now",
            upstream_in_flight.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Answers held in the cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Weighted size of the cache (body bytes plus per-entry overhead)",
            cache_bytes.clone(),
        );
        let watch_ids = Gauge::default();
        registry.register(
            "watch_ids",
            "Task ids watched now (one upstream poller each)",
            watch_ids.clone(),
        );
        let watch_streams = Gauge::default();
        registry.register(
            "watch_streams",
            "Open event streams (watch subscriptions)",
            watch_streams.clone(),
        );
        let webhook_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "webhook_last_accepted_seconds",
            "Seconds since the last accepted webhook about a resource (since start-up when none yet; NaN when webhooks are off)",
            webhook_age.clone(),
        );
        let events_sent = Counter::default();
        registry.register(
            "watch_events_sent",
            "Server-sent events delivered to watchers",
            events_sent.clone(),
        );
        let webhooks = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhooks",
            "Studio webhook calls by outcome (accepted, bad_signature, stale, bad_event_id, duplicate, ignored)",
            webhooks.clone(),
        );
        let l2 = Family::<L2Labels, Counter>::default();
        registry.register(
            "l2_requests",
            "Shared second-level (Redis) operations by op and outcome (hit, miss, undecodable, ok, duplicate, error, timeout, lost)",
            l2.clone(),
        );
        let l2_seconds = latency_histogram();
        registry.register(
            "l2_duration_seconds",
            "Time of one Redis operation",
            l2_seconds.clone(),
        );
        let avoided = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "upstream_calls_avoided",
            "Public requests answered without an upstream call of their own, by what saved it (hit, stale, coalesced, not_modified, watch_shared, backoff, refused)",
            avoided.clone(),
        );
        let access = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "access",
            "Viewer access checks of task and asset reads by outcome (off, granted, missing, invalid, forbidden)",
            access.clone(),
        );
        let secret_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "secret_reloads",
            "Re-reads of *_FILE secrets by setting and outcome (changed, failed)",
            secret_reloads.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "log_events_dropped",
            "Log lines (access events included) dropped because the log writer could not keep up",
            log_dropped.clone(),
        );
        Self {
            log_dropped,
            log_dropped_seen: AtomicU64::new(0),
            avoided,
            access,
            access_kept: Default::default(),
            secret_reloads,
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            request_seconds,
            upstream,
            upstream_seconds,
            coalesced,
            upstream_in_flight,
            cache_entries,
            cache_bytes,
            watch_ids,
            watch_streams,
            webhook_age,
            events_sent,
            webhooks,
            l2,
            l2_seconds,
        }
    }

    /// One public request answered: its count, its duration and, when it cost no upstream
    /// call of its own, the reason that saved it (`taskgate_upstream_calls_avoided_total`).
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        route: &'static str,
        kind: Option<&'static str>,
        status: u16,
        cache: Option<CacheStatus>,
        reason: Option<&'static str>,
        avoided: Option<&'static str>,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            route,
            status,
            cache: cache.map_or("none", CacheStatus::as_str),
            kind: kind.unwrap_or("none"),
            reason: reason.unwrap_or("none"),
        };
        RECENT.with_borrow_mut(|recent| {
            let known = recent
                .iter()
                .position(|r| r.metrics == self.id && r.avoided == avoided && r.labels == labels);
            let i = known.unwrap_or_else(|| {
                let handles = self.resolve(&labels, avoided);
                recent.truncate(RECENT_MAX - 1);
                recent.insert(
                    0,
                    Recent {
                        metrics: self.id,
                        labels,
                        avoided,
                        handles,
                    },
                );
                0
            });
            let h = &recent[i].handles;
            h.requests.inc();
            h.seconds.observe(elapsed.as_secs_f64());
            if let Some(avoided) = &h.avoided {
                avoided.inc();
            }
        });
    }

    fn resolve(&self, labels: &RequestLabels, avoided: Option<&'static str>) -> RequestHandles {
        RequestHandles {
            requests: self.requests.get_or_create(labels).clone(),
            seconds: self
                .request_seconds
                .get_or_create(&CacheLabel {
                    cache: labels.cache,
                })
                .clone(),
            avoided: avoided
                .map(|reason| self.avoided.get_or_create(&ReasonLabel { reason }).clone()),
        }
    }

    pub fn coalesced_wait(&self) {
        self.coalesced.inc();
    }

    /// Counts one upstream fetch in flight until the returned guard is dropped.
    pub fn upstream_started(&self) -> InFlight<'_> {
        self.upstream_in_flight.inc();
        InFlight(&self.upstream_in_flight)
    }

    pub fn upstream_finished(&self, report: &UpstreamReport) {
        let status_class = match report.status.map(|s| s / 100) {
            Some(1) => "1xx",
            Some(2) => "2xx",
            Some(3) => "3xx",
            Some(4) => "4xx",
            Some(5) => "5xx",
            _ => "none",
        };
        let error = report.error.unwrap_or("none");
        self.upstream
            .get_or_create(&UpstreamLabels {
                status_class,
                error,
            })
            .inc();
        self.upstream_seconds.observe(report.elapsed.as_secs_f64());
    }

    /// The counter the watch feeds increment for each event delivered.
    pub fn events_sent(&self) -> Counter {
        self.events_sent.clone()
    }

    /// One shared-level (Redis) operation's outcome: `get` hit/miss/undecodable, `set` ok,
    /// `invalidate` ok, `subscribe` lost, and for any op `error` or `timeout`.
    pub fn l2(&self, op: &'static str, outcome: &'static str) {
        self.l2.get_or_create(&L2Labels { op, outcome }).inc();
    }

    pub fn l2_latency(&self, elapsed: Duration) {
        self.l2_seconds.observe(elapsed.as_secs_f64());
    }

    /// One viewer access check (`off` when viewer access is not configured).
    pub fn access(&self, outcome: viewer::Outcome) {
        let series = || {
            let outcome = outcome.as_str();
            self.access.get_or_create(&OutcomeLabel { outcome }).clone()
        };
        // An outcome missing from `Outcome::ALL` is still counted, through its family.
        match self.access_kept.get(outcome as usize) {
            Some(kept) => kept.get_or_init(series).inc(),
            None => series().inc(),
        };
    }

    /// One re-read of a secret file that changed something (`changed`) or failed (`failed`).
    pub fn secret_reload(&self, setting: &'static str, outcome: &'static str) {
        self.secret_reloads
            .get_or_create(&ReloadLabels { setting, outcome })
            .inc();
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Renders the Prometheus text format (0.0.4), with the gauges read now.
    pub fn render(&self, now: Snapshot) -> String {
        let set = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.cache_entries, now.cache_entries);
        set(&self.cache_bytes, now.cache_bytes);
        set(&self.watch_ids, now.watch_ids as u64);
        set(&self.watch_streams, now.watch_streams as u64);
        self.webhook_age
            .set(now.webhook_age.map_or(f64::NAN, |d| d.as_secs_f64()));
        // The writer counts its drops itself; the counter catches up with it here. `fetch_max`
        // keeps concurrent renders from adding the same drops twice.
        let dropped = super::log_events_dropped();
        let seen = self.log_dropped_seen.fetch_max(dropped, Ordering::Relaxed);
        if dropped > seen {
            self.log_dropped.inc_by(dropped - seen);
        }
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Gauges read from their owners at scrape time.
#[derive(Default)]
pub struct Snapshot {
    pub cache_entries: u64,
    pub cache_bytes: u64,
    pub watch_ids: usize,
    pub watch_streams: usize,
    /// Time since the last accepted webhook; `None` when webhooks are off.
    pub webhook_age: Option<Duration>,
}

pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metrics read back, for the admin status page: exactly what `/metrics` shows at the
/// moment of reading (the same rendering, parsed), so the page and a scrape never disagree
/// and a family added later appears on the page without a second bookkeeping.
impl Metrics {
    pub fn read(&self, now: Snapshot) -> Readout {
        Readout::parse(&self.render(now))
    }
}

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of one rendering. A family with no labelled series yet has no samples.
#[derive(Debug, Default)]
pub struct Readout {
    samples: Vec<Sample>,
}

impl Readout {
    /// Parses the text format [`Metrics::render`] writes (comments skipped, label values
    /// unescaped). A line it cannot read is skipped, never guessed at.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Self { samples }
    }

    /// The samples named `name` (a full sample name: `…_total`, `…_bucket`, a gauge's name).
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples(name).next().is_some()
    }

    /// The sum of the samples named `name` whose labels include every pair of `only`.
    pub fn sum(&self, name: &str, only: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|s| only.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }

    /// The samples named `name` summed by the value of `label`, in order of first appearance.
    pub fn sum_by(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for s in self.samples(name) {
            let key = s.label(label).unwrap_or_default();
            match out.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v += s.value,
                None => out.push((key.to_owned(), s.value)),
            }
        }
        out
    }

    /// A histogram's cumulative buckets summed over its series, `(le, count)` by rising `le`
    /// (`+Inf` last).
    pub fn buckets(&self, histogram: &str) -> Vec<(f64, f64)> {
        let name = format!("{histogram}_bucket");
        let mut out: Vec<(f64, f64)> = Vec::new();
        for s in self.samples(&name) {
            let Some(le) = s.label("le").and_then(|le| match le {
                "+Inf" => Some(f64::INFINITY),
                le => le.parse().ok(),
            }) else {
                continue;
            };
            match out.iter_mut().find(|(b, _)| *b == le) {
                Some((_, n)) => *n += s.value,
                None => out.push((le, s.value)),
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_owned(),
            labels: Vec::new(),
            value,
        });
    };
    let mut labels = Vec::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (label, after) = rest.split_once("=\"")?;
        let mut text = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => text.push('\n'),
                    c => text.push(c),
                },
                (_, c) => text.push(c),
            }
        };
        labels.push((label.to_owned(), text));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod read_tests {
    use super::*;

    #[test]
    fn reads_back_what_render_writes() {
        let m = Metrics::new();
        let hit = |m: &Metrics, ms| {
            m.request(
                "task",
                Some("task"),
                200,
                Some(CacheStatus::Hit),
                None,
                Some("hit"),
                Duration::from_millis(ms),
            );
        };
        hit(&m, 1);
        hit(&m, 3);
        m.request(
            "task",
            None,
            400,
            None,
            Some("bad_id"),
            None,
            Duration::ZERO,
        );
        m.coalesced_wait();
        let r = m.read(Snapshot {
            cache_entries: 3,
            cache_bytes: 4096,
            watch_ids: 1,
            watch_streams: 2,
            ..Snapshot::default()
        });
        assert_eq!(r.sum("taskgate_requests_total", &[]), 3.0);
        assert_eq!(r.sum("taskgate_requests_total", &[("cache", "HIT")]), 2.0);
        // Families render their series in hash-map order: compare as a set.
        let mut by_cache = r.sum_by("taskgate_requests_total", "cache");
        by_cache.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            by_cache,
            vec![("HIT".to_owned(), 2.0), ("none".to_owned(), 1.0)]
        );
        assert_eq!(r.sum("taskgate_upstream_calls_avoided_total", &[]), 2.0);
        assert_eq!(r.sum("taskgate_coalesced_waits_total", &[]), 1.0);
        assert_eq!(r.sum("taskgate_cache_bytes", &[]), 4096.0);
        assert_eq!(r.sum("taskgate_watch_streams", &[]), 2.0);
        let buckets = r.buckets("taskgate_request_duration_seconds");
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 3.0)));
        assert!(buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(!r.has("taskgate_webhooks_total"));
    }

    /// The handles a thread keeps must count where the families would: per set of metrics,
    /// per label set, per reason saved, also past the number of label sets kept.
    #[test]
    fn kept_handles_count_where_the_families_would() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let count = |m: &Metrics, status, avoided| {
            m.request("task", None, status, None, None, avoided, Duration::ZERO);
        };
        // Two sets of metrics in turn, with the same labels, with and without a call saved
        // (a coalesced MISS and its leader): each finds its own handles kept.
        for _ in 0..3 {
            count(&a, 200, Some("coalesced"));
            count(&b, 200, None);
            count(&a, 200, None);
        }
        // More label sets than a thread keeps, three times over.
        let statuses = 300..300 + RECENT_MAX as u16 * 2;
        for _ in 0..3 {
            for status in statuses.clone() {
                count(&a, status, None);
            }
        }
        // The thread keeps no more than its bound.
        assert_eq!(RECENT.with_borrow(Vec::len), RECENT_MAX);
        let (ra, rb) = (a.read(Snapshot::default()), b.read(Snapshot::default()));
        let ok = [("status", "200")];
        assert_eq!(ra.sum("taskgate_requests_total", &ok), 6.0);
        assert_eq!(rb.sum("taskgate_requests_total", &ok), 3.0);
        let coalesced = [("reason", "coalesced")];
        assert_eq!(
            ra.sum("taskgate_upstream_calls_avoided_total", &coalesced),
            3.0
        );
        assert!(!rb.has("taskgate_upstream_calls_avoided_total"));
        for status in statuses {
            let s = status.to_string();
            let labels = [("status", s.as_str())];
            assert_eq!(ra.sum("taskgate_requests_total", &labels), 3.0, "{s}");
        }
        let all = 6.0 + RECENT_MAX as f64 * 2.0 * 3.0;
        assert_eq!(
            ra.buckets("taskgate_request_duration_seconds").last(),
            Some(&(f64::INFINITY, all))
        );
    }

    #[test]
    fn each_access_outcome_is_counted_under_its_own_label() {
        let (a, b) = (Metrics::new(), Metrics::new());
        for (n, outcome) in viewer::Outcome::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                a.access(outcome);
            }
        }
        b.access(viewer::Outcome::Granted);
        let (ra, rb) = (a.read(Snapshot::default()), b.read(Snapshot::default()));
        for (n, outcome) in viewer::Outcome::ALL.into_iter().enumerate() {
            let labels = [("outcome", outcome.as_str())];
            assert_eq!(ra.sum("taskgate_access_total", &labels), n as f64 + 1.0);
        }
        assert_eq!(rb.sum("taskgate_access_total", &[]), 1.0);
        assert_eq!(
            rb.sum("taskgate_access_total", &[("outcome", "granted")]),
            1.0
        );
    }

    #[test]
    fn unescapes_label_values_and_skips_what_it_cannot_read() {
        let r = Readout::parse(
            "# TYPE x counter\nx_total{a=\"q\\\"uo\\\\te\",b=\"\"} 2\ny 1.5\nbroken{a=\"1\" 3\nz nan-ish\n",
        );
        let x: Vec<_> = r.samples("x_total").collect();
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].label("a"), Some("q\"uo\\te"));
        assert_eq!(x[0].label("b"), Some(""));
        assert_eq!(r.sum("y", &[]), 1.5);
        assert!(!r.has("broken") && !r.has("z"));
    }
}
