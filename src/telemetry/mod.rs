//! Logs and traces.
//!
//! Owns the global `tracing` subscriber and, with the cargo feature `otel`, the OpenTelemetry
//! span export. Guarantees:
//!
//! - Log output is JSON lines by default, a human layout with `TASKGATE_LOG_FORMAT=pretty`,
//!   filtered by `TASKGATE_LOG` (`RUST_LOG` syntax). Events carry fields, never headers,
//!   bodies or the key.
//! - With `otel` and `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//!   set, the request spans (target `taskgate::…`, level INFO and up) are exported over
//!   OTLP/HTTP protobuf as service `OTEL_SERVICE_NAME` (default `taskgate`). The export has
//!   its own filter, so a quiet `TASKGATE_LOG` does not silence traces, and a chatty one
//!   does not flood the collector with dependencies' debug spans.
//! - Without `otel` nothing here depends on OpenTelemetry; an OTLP endpoint in the
//!   environment gets one startup warning, so an operator knows why no spans arrive.
//! - Writing a log line never slows a request: the formatted line is appended to a bounded
//!   queue ([`LOG_QUEUE_BYTES`]) and written to stdout by a thread of its own, in batches (one
//!   `write` per batch of up to 10 ms or 64 KiB, not per line). When the sink cannot keep up
//!   (a full pipe, a stalled disk) new lines are dropped and counted
//!   ([`log_events_dropped`], exported as `taskgate_log_events_dropped_total`), never queued
//!   without bound and never waited for.
//! - Span fields are kept as one JSON object that a later `span.record` extends in place
//!   ([`SpanJson`]), instead of `tracing-subscriber`'s default of parsing the object back and
//!   re-serialising it for every recorded field. The access event is emitted outside the
//!   request span and carries every field itself, so formatting it reads no span at all;
//!   other events inside a request show the request span's fields under `span`.
//! - [`Telemetry::shutdown`] flushes what is still queued, bounded in time: a collector
//!   that is down or hangs never holds the exit; the log queue is written out last.

mod metrics;

use std::{
    fmt::{self as stdfmt, Write as _},
    io::{self, Write},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, OnceLock, PoisonError,
    },
    time::Duration,
};

use http::HeaderValue;
use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{
        self,
        format::{FormatFields, Writer},
        FormattedFields, MakeWriter,
    },
    layer::SubscriberExt,
    util::SubscriberInitExt,
    EnvFilter, Layer, Registry,
};

pub use metrics::{Metrics, Readout, Sample, Snapshot};

use crate::{config::LogFormat, ids::TraceContext};

/// A layer of the global subscriber, chosen at run time.
type DynLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The running telemetry: keep it until the server has drained, then call
/// [`Telemetry::shutdown`]. Without the `otel` feature (or without an endpoint) it holds
/// nothing and shutting it down does nothing.
#[must_use = "call `shutdown` after the server has drained, or queued spans and log lines are lost"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// The log writer thread: dropping it writes out what is queued (bounded in time).
    log: Option<LogGuard>,
}

/// Bytes of log lines waiting for the writer thread at most (about 8000 access events);
/// past that, new lines are dropped and counted.
pub const LOG_QUEUE_BYTES: usize = 4 << 20;
/// The writer thread writes as soon as this much is waiting...
const LOG_BATCH_BYTES: usize = 64 << 10;
/// ...or this long after the first line of a batch arrived.
const LOG_BATCH_DELAY: Duration = Duration::from_millis(10);
/// How long shutdown waits for the writer thread to write out the queue.
const LOG_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The installed log writer's drop count (unset until a subscriber is installed).
static DROPPED: OnceLock<Arc<AtomicU64>> = OnceLock::new();

/// Log lines dropped so far because the writer thread could not keep up (or the sink
/// failed): the value of `taskgate_log_events_dropped_total`.
pub fn log_events_dropped() -> u64 {
    DROPPED.get().map_or(0, |c| c.load(Ordering::Relaxed))
}

/// The log lines waiting for the writer thread, as one byte buffer: a request thread appends
/// its line under a short lock (a copy, no allocation once the buffer has grown, no wake-up
/// unless the writer thread sleeps with nothing to do or a batch is full); the writer thread
/// swaps the whole buffer out and writes it with one call.
///
/// Measured against `tracing-appender`'s `non_blocking` (a channel of one `Vec` per line,
/// bench/compare.sh, BENCHMARKS.md): its worker thread took 11 % of taskgate's CPU at 25 k
/// events/s, most of it spinning and yielding in the channel's receive, and each line cost an
/// allocation and a send.
struct LogQueue {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: Arc<AtomicU64>,
    limit: usize,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// The writer thread waits for a first line.
    idle: bool,
    /// The writer thread waits for a batch to fill (or for LOG_BATCH_DELAY).
    batching: bool,
    closed: bool,
}

impl LogQueue {
    fn push(&self, line: &[u8]) {
        let mut p = lock(&self.pending);
        if p.lines.len() + line.len() > self.limit {
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        p.lines.extend_from_slice(line);
        let wake = p.idle || (p.batching && p.lines.len() >= LOG_BATCH_BYTES);
        drop(p);
        if wake {
            self.wake.notify_one();
        }
    }

    /// The writer thread's loop: until closed and drained.
    fn run(&self, mut sink: impl Write) {
        let mut batch = Vec::new();
        let mut p = lock(&self.pending);
        loop {
            if p.lines.is_empty() {
                if p.closed {
                    break;
                }
                p.idle = true;
                p = self.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
                p.idle = false;
                continue;
            }
            if p.lines.len() < LOG_BATCH_BYTES && !p.closed {
                p.batching = true;
                p = self
                    .wake
                    .wait_timeout(p, LOG_BATCH_DELAY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                p.batching = false;
            }
            std::mem::swap(&mut p.lines, &mut batch);
            drop(p);
            if sink.write_all(&batch).and_then(|()| sink.flush()).is_err() {
                let lost = batch.iter().filter(|&&b| b == b'\n').count();
                self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            }
            batch.clear();
            p = lock(&self.pending);
        }
    }
}

fn lock(m: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the log layer writes: the queue of the writer thread. Each event is one
/// `write_all` of one whole line, so a line is queued whole or dropped whole.
#[derive(Clone)]
struct LogWriter(Arc<LogQueue>);

impl Write for &LogQueue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogQueue;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

/// Closes the queue on drop and waits (at most LOG_FLUSH_WAIT) for the writer thread to write
/// out what is in it.
struct LogGuard {
    queue: Arc<LogQueue>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.queue.pending).closed = true;
        self.queue.wake.notify_one();
        let _ = self.done.recv_timeout(LOG_FLUSH_WAIT);
    }
}

/// The off-request-path writer: a queue of at most `limit` bytes in front of a thread that
/// writes `sink`, in batches, and flushes after each.
fn log_writer(sink: impl Write + Send + 'static, limit: usize) -> (LogWriter, LogGuard) {
    let queue = Arc::new(LogQueue {
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        dropped: Arc::new(AtomicU64::new(0)),
        limit,
    });
    let (done_tx, done) = std::sync::mpsc::channel();
    let q = Arc::clone(&queue);
    let spawned = std::thread::Builder::new()
        .name("taskgate-log".into())
        .spawn(move || {
            q.run(sink);
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        // Without a thread every line is dropped (and counted); say so once.
        eprintln!("taskgate: cannot start the log writer thread: {e}");
        lock(&queue.pending).closed = true;
    }
    (LogWriter(Arc::clone(&queue)), LogGuard { queue, done })
}

/// The log layer: `format` lines written by `writer`, filtered by `filter`.
fn log_layer(format: LogFormat, filter: EnvFilter, writer: LogWriter) -> DynLayer {
    let log = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .fmt_fields(SpanJson)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => fmt::layer().compact().with_writer(writer).boxed(),
    };
    // A per-layer filter rather than a global one: the span exporter has its own.
    log.with_filter(filter).boxed()
}

/// Installs the global subscriber (and the span exporter, when configured). `filter` uses
/// `RUST_LOG` syntax; it was validated with the configuration, so a parse failure here
/// falls back to `info`.
///
/// With the `otel` feature this must run inside a tokio runtime: the exporter's batch task
/// is spawned on it.
pub fn init(format: LogFormat, filter: &str) -> Telemetry {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = log_writer(io::stdout(), LOG_QUEUE_BYTES);
    let dropped = Arc::clone(&writer.0.dropped);
    let log = log_layer(format, filter, writer);

    #[cfg(feature = "otel")]
    let settings = if tracing::dispatcher::has_been_set() {
        // Already initialised (tests starting several servers): an exporter would get no
        // spans, and dropping an unused one blocks.
        Ok(None)
    } else {
        otel::Settings::from_env(env_var)
    };
    #[cfg(feature = "otel")]
    let (export, provider, note) = match settings {
        Ok(None) => (None, None, None),
        Ok(Some(settings)) => match otel::start(&settings) {
            Ok((layer, provider)) => (Some(layer), Some(provider), Some(Ok(settings))),
            Err(e) => (None, None, Some(Err(e))),
        },
        Err(e) => (None, None, Some(Err(e))),
    };
    #[cfg(not(feature = "otel"))]
    let export: Option<DynLayer> = None;
    // A list, because which layers there are is only known at run time.
    let layers: Vec<DynLayer> = std::iter::once(log).chain(export).collect();

    // A second init (tests starting several servers) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    // A second init's writer is never used: its thread ends with the guard.
    let log = if installed {
        let _ = DROPPED.set(dropped);
        Some(guard)
    } else {
        None
    };

    #[cfg(feature = "otel")]
    {
        match note {
            Some(Ok(s)) if installed => tracing::info!(
                endpoint = %s.endpoint,
                service = %s.service,
                "exporting spans over OTLP/HTTP"
            ),
            Some(Err(e)) => tracing::error!(error = %e, "spans are not exported"),
            _ => {}
        }
        // Kept even if another subscriber won the race: `shutdown` stops it, bounded.
        Telemetry { provider, log }
    }
    #[cfg(not(feature = "otel"))]
    {
        if installed {
            if let Some(var) = traces_endpoint_var(env_var) {
                tracing::warn!(
                    variable = var,
                    "{var} is set but this build has no OpenTelemetry support \
                     (build with --features otel): spans are not exported"
                );
            }
        }
        Telemetry { log }
    }
}

impl Telemetry {
    /// Flushes queued spans to the collector and stops the exporter. Waits at most a few
    /// seconds (then gives up on the spans, with a warning). Call it inside the runtime, after
    /// the server has drained: the export itself runs on the runtime.
    ///
    /// Then writes out the queued log lines: the writer thread drains its queue and flushes
    /// (waiting at most LOG_FLUSH_WAIT, 2 s, when the sink is stuck).
    pub async fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider {
            otel::shutdown(provider).await;
        }
        if let Some(guard) = self.log {
            // Dropping the guard waits for the writer thread: not on a runtime worker.
            let _ = tokio::task::spawn_blocking(move || drop(guard)).await;
        }
    }
}

/// Span fields for the JSON log layer: one JSON object (`{"request_id":"…",…}`) that a later
/// `span.record` extends in place. `tracing-subscriber`'s own `JsonFields` parses the object
/// back into a map and re-serialises it for every recorded field, five times per request
/// here; appending is enough, because the JSON event formatter reads the object with
/// `serde_json`, where a repeated name (a field recorded twice) keeps the last value.
pub struct SpanJson;

impl<'w> FormatFields<'w> for SpanJson {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> stdfmt::Result {
        let mut object = String::with_capacity(192);
        object.push('{');
        let mut v = JsonObject::new(&mut object, true);
        fields.record(&mut v);
        v.result?;
        object.push('}');
        writer.write_str(&object)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> stdfmt::Result {
        let object = &mut current.fields;
        if object.pop() != Some('}') {
            // Nothing formatted yet (or not by us): start afresh.
            object.clear();
            object.push('{');
        }
        let first = object.len() == 1;
        let mut v = JsonObject::new(object, first);
        fields.record(&mut v);
        let result = v.result;
        object.push('}');
        result
    }
}

/// Writes visited fields as `"name":value` members of a JSON object under construction.
struct JsonObject<'a> {
    out: &'a mut String,
    first: bool,
    result: stdfmt::Result,
}

impl<'a> JsonObject<'a> {
    fn new(out: &'a mut String, first: bool) -> Self {
        Self {
            out,
            first,
            result: Ok(()),
        }
    }

    fn name(&mut self, field: &Field) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        escape_json(self.out, field.name());
        self.out.push_str("\":");
    }
}

impl Visit for JsonObject<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        if value.is_finite() {
            self.result = self.result.and(write!(self.out, "{value}"));
        } else {
            self.out.push_str("null");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.result = self.result.and(write!(self.out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.result = self.result.and(write!(self.out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        self.out.push('"');
        escape_json(self.out, value);
        self.out.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn stdfmt::Debug) {
        self.name(field);
        self.out.push('"');
        self.result = self.result.and(write!(Escaped(self.out), "{value:?}"));
        self.out.push('"');
    }
}

/// A `fmt::Write` that JSON-escapes what is written through it.
struct Escaped<'a>(&'a mut String);

impl stdfmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> stdfmt::Result {
        escape_json(self.0, s);
        Ok(())
    }
}

/// Appends `s` to `out` as the inside of a JSON string.
fn escape_json(out: &mut String, s: &str) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Only ASCII bytes are escaped, so `i` is a char boundary.
        out.push_str(&s[start..i]);
        if short.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Ties a request span to the client's trace (its `traceparent`, when valid) and returns the
/// span's own context: the trace id for logs and the parent of the upstream `traceparent`.
///
/// With spans exported, the returned ids are those of the exported span, so the upstream
/// request is that span's child in the collector. Otherwise (or if the exporter cannot give
/// the span a valid context) the ids come from [`TraceContext::continue_or_start`].
pub fn attach(span: &tracing::Span, client: Option<&HeaderValue>) -> TraceContext {
    #[cfg(feature = "otel")]
    if let Some(own) = otel::attach(span, client) {
        return own;
    }
    #[cfg(not(feature = "otel"))]
    let _ = span;
    TraceContext::continue_or_start(client)
}

/// The process environment, with empty values counted as unset (as the OTel spec says).
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Which variable configures the traces endpoint, if any: the signal-specific one wins.
fn traces_endpoint_var(get: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find(|var| get(var).is_some())
}

#[cfg(feature = "otel")]
mod otel {
    use std::{sync::Arc, time::Duration};

    use http::HeaderValue;
    use hyper_util::client::legacy::connect::HttpConnector;
    use opentelemetry::{
        trace::{
            SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
            TracerProvider as _,
        },
        Context, KeyValue,
    };
    use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
    use opentelemetry_sdk::{
        runtime,
        trace::{span_processor_with_async_runtime::BatchSpanProcessor, SdkTracerProvider},
        Resource,
    };
    use tracing::Level;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::{filter::Targets, Layer as _};

    use super::{traces_endpoint_var, DynLayer};
    use crate::ids::TraceContext;

    /// How long shutdown waits for the last export.
    const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
    /// Per-request deadline of one export when `OTEL_EXPORTER_OTLP_TIMEOUT` is not set
    /// (the spec's default).
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// What the standard `OTEL_*` variables ask for.
    #[derive(Debug, Clone, PartialEq)]
    pub(super) struct Settings {
        /// The full traces URL, `…/v1/traces`.
        pub endpoint: String,
        pub service: String,
        pub timeout: Duration,
    }

    impl Settings {
        /// `Ok(None)`: no export configured (or explicitly disabled). `Err`: configured but
        /// unusable, with the reason.
        pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
            if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
                || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
            {
                return Ok(None);
            }
            let Some(var) = traces_endpoint_var(&get) else {
                return Ok(None);
            };
            let value = get(var).unwrap_or_default();
            let value = value.trim();
            // Per the spec the signal-specific URL is used as is; the generic one is a base.
            let endpoint = if var == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" {
                value.to_owned()
            } else {
                format!("{}/v1/traces", value.trim_end_matches('/'))
            };
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|e| format!("{var}={value:?} is not a URL ({e})"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!(
                    "{var}={value:?} is not an http:// or https:// URL with a host"
                ));
            }
            // Only OTLP/HTTP protobuf is built in; say so rather than fail every export.
            if let Some(p) = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
                .filter(|p| p.trim() != "http/protobuf")
            {
                return Err(format!(
                    "OTLP protocol {p:?} is not supported (this build speaks http/protobuf)"
                ));
            }
            let timeout = get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                .or_else(|| get("OTEL_EXPORTER_OTLP_TIMEOUT"))
                .and_then(|ms| ms.trim().parse().ok())
                .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
            Ok(Some(Self {
                endpoint,
                service: get("OTEL_SERVICE_NAME").unwrap_or_else(|| "taskgate".into()),
                timeout,
            }))
        }
    }

    /// Builds the exporter, its batch task (spawned on the current tokio runtime) and the
    /// tracing layer that feeds it.
    pub fn start(s: &Settings) -> Result<(DynLayer, SdkTracerProvider), String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(s.endpoint.clone())
            .with_http_client(http_client(s.timeout))
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
        // The async-runtime processor, not `with_batch_exporter`: the latter exports from a
        // plain thread, where the hyper client panics for want of a tokio reactor.
        let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
        let resource = Resource::builder()
            .with_service_name(s.service.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("taskgate"))
            .with_threads(false)
            // taskgate's own spans (the `request` span and anything under it) only: not
            // the dependencies' debug spans, nor the exporter's own events.
            .with_filter(Targets::new().with_target("taskgate", Level::INFO))
            .boxed();
        Ok((layer, provider))
    }

    /// The hyper client taskgate already uses, on rustls with ring (the crate's default
    /// connector is plain HTTP only), so `https://` collectors work too.
    fn http_client(
        timeout: Duration,
    ) -> opentelemetry_http::hyper::HyperClient<hyper_rustls::HttpsConnector<HttpConnector>> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        // An explicit provider: the process-wide default is not set in taskgate.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        opentelemetry_http::hyper::HyperClient::new(https, timeout, None)
    }

    /// Parents `span` on the client's trace and returns the span's own OTel ids; `None` when
    /// no exporter layer handles the span (no endpoint, span filtered out) or its context is
    /// invalid.
    pub fn attach(span: &tracing::Span, client: Option<&HeaderValue>) -> Option<TraceContext> {
        let parent = match client.and_then(|v| TraceContext::parse(v.as_bytes())) {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(p.trace_id),
                SpanId::from(p.span_id),
                TraceFlags::new(p.flags),
                true,
                TraceState::default(),
            )),
            // No (valid) client trace: an empty parent makes the span a new trace's root.
            None => Context::new(),
        };
        // Fails when no OTel layer sees this span: the caller falls back to its own ids.
        span.set_parent(parent).ok()?;
        // This starts the OTel span, fixing its ids; later `record`s still reach it.
        let cx = span.context();
        let own = cx.span().span_context().clone();
        own.is_valid().then(|| TraceContext {
            trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(own.span_id().to_bytes()),
            flags: own.trace_flags().to_u8(),
        })
    }

    pub async fn shutdown(provider: SdkTracerProvider) {
        // `SdkTracerProvider::shutdown` blocks until the batch task (on this runtime) has
        // exported, ignoring its own timeout. Run it on a plain thread and stop waiting
        // after SHUTDOWN_WAIT. Not `spawn_blocking`: the runtime's drop would wait for a
        // timed-out blocking task anyway, and the exit would hang with it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("otel-shutdown".into())
            .spawn(move || {
                let _ = tx.send(provider.shutdown());
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot flush spans");
            return;
        }
        match tokio::time::timeout(SHUTDOWN_WAIT, rx).await {
            Ok(Ok(Ok(()))) => tracing::debug!("spans flushed"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "span export shut down with an error"),
            Ok(Err(_)) => tracing::warn!("span export shutdown panicked"),
            Err(_) => tracing::warn!(
                wait_s = SHUTDOWN_WAIT.as_secs(),
                "span export did not finish in time; unsent spans are dropped"
            ),
        }
    }

    #[cfg(test)]
    mod tests {
        use std::collections::HashMap;

        use super::*;

        fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, String> {
            let vars: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::from_env(|k| vars.get(k).filter(|v| !v.is_empty()).cloned())
        }

        #[test]
        fn no_endpoint_means_no_export() {
            assert_eq!(settings(&[]), Ok(None));
            assert_eq!(settings(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
            assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]), Ok(None));
        }

        #[test]
        fn the_generic_endpoint_gets_the_traces_path() {
            let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
                .unwrap()
                .unwrap();
            assert_eq!(s.endpoint, "http://c:4318/v1/traces");
            assert_eq!(s.service, "taskgate");
            assert_eq!(s.timeout, DEFAULT_TIMEOUT);
            let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c/otlp/")])
                .unwrap()
                .unwrap();
            assert_eq!(s.endpoint, "https://c/otlp/v1/traces");
        }

        #[test]
        fn the_traces_endpoint_is_used_as_is_and_wins() {
            let s = settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ])
            .unwrap()
            .unwrap();
            assert_eq!(s.endpoint, "http://c:4318/custom");
            assert_eq!(s.service, "edge");
            assert_eq!(s.timeout, Duration::from_millis(2500));
        }

        #[test]
        fn disabled_or_unusable_settings() {
            let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
            assert_eq!(settings(&[on, ("OTEL_SDK_DISABLED", "true")]), Ok(None));
            assert_eq!(settings(&[on, ("OTEL_TRACES_EXPORTER", "none")]), Ok(None));
            assert!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]).is_err());
            assert!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")]).is_err());
            assert!(settings(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).is_err());
            assert!(
                settings(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
                    .unwrap()
                    .is_some()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Whether the gate is open, and what went through it.
    type GateState = Mutex<(bool, Vec<u8>)>;

    /// A sink that holds every `write` until `open` is called, and keeps what it was given.
    #[derive(Clone, Default)]
    struct Gate {
        state: Arc<(GateState, Condvar)>,
    }

    impl Gate {
        fn open(&self) {
            let (lock, cvar) = &*self.state;
            lock.lock().unwrap().0 = true;
            cvar.notify_all();
        }

        fn lines(&self) -> Vec<serde_json::Value> {
            let written = self.state.0.lock().unwrap().1.clone();
            String::from_utf8(written)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
                .collect()
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cvar) = &*self.state;
            let mut state = cvar.wait_while(lock.lock().unwrap(), |s| !s.0).unwrap();
            state.1.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn subscriber(writer: LogWriter) -> impl tracing::Subscriber + Send + Sync {
        Registry::default().with(log_layer(LogFormat::Json, EnvFilter::new("info"), writer))
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_lines_and_never_blocks_the_caller() {
        const EVENTS: u64 = 200;
        let sink = Gate::default();
        let (writer, guard) = log_writer(sink.clone(), 4096);
        let dropped = Arc::clone(&writer.0.dropped);
        let sub = subscriber(writer);
        // The events are emitted on another thread: if logging waited for the stuck sink,
        // `done` would never be sent (the timeout only turns a hang into a failure).
        let (done, emitted) = mpsc::channel();
        std::thread::spawn(move || {
            tracing::subscriber::with_default(sub, || {
                for i in 0..EVENTS {
                    tracing::info!(target: "taskgate::access", i, "request");
                }
            });
            done.send(()).unwrap();
        });
        emitted
            .recv_timeout(Duration::from_secs(60))
            .expect("emitting events with a stuck sink returns");
        let lost = dropped.load(Ordering::Relaxed);
        // At most the queue (4 KiB) and what the writer thread took before it got stuck are kept.
        assert!(lost > 0 && lost < EVENTS, "dropped {lost} of {EVENTS}");

        // Shutdown writes out everything that was queued, in order.
        sink.open();
        drop(guard);
        let lines = sink.lines();
        assert_eq!(
            lines.len() as u64 + lost,
            EVENTS,
            "kept + dropped = emitted"
        );
        let ids: Vec<u64> = lines.iter().map(|l| l["i"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
        assert_eq!(lines[0]["target"], "taskgate::access");
        assert_eq!(lines[0]["message"], "request");
    }

    #[test]
    fn queued_lines_are_flushed_at_shutdown() {
        let sink = Gate::default();
        sink.open();
        let (writer, guard) = log_writer(sink.clone(), LOG_QUEUE_BYTES);
        let dropped = Arc::clone(&writer.0.dropped);
        tracing::subscriber::with_default(subscriber(writer), || {
            for i in 0..1000 {
                tracing::info!(target: "taskgate::access", i, "request");
            }
        });
        drop(guard);
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
        assert_eq!(sink.lines().len(), 1000);
    }

    #[test]
    fn span_fields_recorded_later_reach_events_inside_the_span() {
        let sink = Gate::default();
        sink.open();
        let (writer, guard) = log_writer(sink.clone(), LOG_QUEUE_BYTES);
        tracing::subscriber::with_default(subscriber(writer), || {
            let span = tracing::info_span!(
                "request",
                request_id = tracing::field::display("r-1"),
                route = "task",
                status = tracing::field::Empty,
                cache = tracing::field::Empty,
                upstream_ms = tracing::field::Empty,
                ok = tracing::field::Empty,
            );
            span.record("status", 200);
            span.record("cache", "a \"quoted\"\n\u{1}value\\");
            span.record("upstream_ms", 1.5);
            span.record("ok", true);
            span.in_scope(|| tracing::warn!(error = "boom", "upstream error"));
            // Outside the span: no `span` member.
            tracing::info!(target: "taskgate::access", status = 200, "request");
        });
        drop(guard);
        let lines = sink.lines();
        assert_eq!(lines.len(), 2);
        let span = &lines[0]["span"];
        assert_eq!(span["name"], "request");
        assert_eq!(span["request_id"], "r-1");
        assert_eq!(span["route"], "task");
        assert_eq!(span["status"], 200);
        assert_eq!(span["cache"], "a \"quoted\"\n\u{1}value\\");
        assert_eq!(span["upstream_ms"], 1.5);
        assert_eq!(span["ok"], true);
        assert_eq!(lines[0]["error"], "boom");
        assert!(lines[1].get("span").is_none(), "{}", lines[1]);
    }

    #[test]
    fn the_drop_counter_is_exported() {
        let m = Metrics::new();
        let r = m.read(Snapshot {
            cache_entries: 0,
            cache_bytes: 0,
            watch_ids: 0,
            watch_streams: 0,
        });
        assert!(r.has("taskgate_log_events_dropped_total"));
        assert_eq!(
            r.sum("taskgate_log_events_dropped_total", &[]),
            log_events_dropped() as f64
        );
    }

    #[test]
    fn json_escaping() {
        let mut out = String::new();
        escape_json(&mut out, "plain é \" \\ \n \r \t \u{0} \u{1f} end");
        assert_eq!(out, r#"plain é \" \\ \n \r \t \u0000 \u001f end"#);
    }
}
