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
//! - Lines are formatted by hand (`JsonLines`), in the layout of `tracing-subscriber`'s JSON
//!   format (checked side by side in the tests), at about a third of its cost. Span fields
//!   are kept as one JSON object that a later `span.record` extends in place ([`SpanJson`]),
//!   instead of `tracing-subscriber`'s default of parsing the object back and re-serialising
//!   it for every recorded field. The access event is emitted outside the request span and
//!   carries every field itself; with the JSON log it is built straight from typed fields
//!   ([`access`]). Other events inside a request show the request span's fields under
//!   `span`; when only the JSON log would see the span, the request has none and its fields
//!   are kept beside it instead ([`InRequest`]), printed the same way.
//! - [`Telemetry::shutdown`] flushes what is still queued, bounded in time: a collector
//!   that is down or hangs never holds the exit; the log queue is written out last.

mod access;
mod log;
mod metrics;
mod probe;
mod request;

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

use http::HeaderValue;
use tracing_subscriber::{
    layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer, Registry,
};

pub use access::{access, AccessEvent};
pub use log::{log_events_dropped, SpanJson, LOG_QUEUE_BYTES};
use log::{log_layer, log_writer, LogGuard};
pub use metrics::{Metrics, Readout, Sample, Snapshot};
pub use request::{in_request, request_span, spans_needed, InRequest, RequestFields};

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

/// Installs the global subscriber (and the span exporter, when configured). `filter` uses
/// `RUST_LOG` syntax; it was validated with the configuration, so a parse failure here
/// falls back to `info`.
///
/// With the `otel` feature this must run inside a tokio runtime: the exporter's batch task
/// is spawned on it.
pub fn init(format: LogFormat, filter: &str) -> Telemetry {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = log_writer(io::stdout(), LOG_QUEUE_BYTES);
    let drops = writer.drops();
    let queue = writer.queue();
    let verdicts = probe::ask(&filter);
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
        log::publish_drops(drops);
        if format == LogFormat::Json {
            access::install(&verdicts.access, queue);
            request::install(
                verdicts.access.is_always() && verdicts.span.is_always() && !verdicts.dynamic,
            );
        }
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
        if installed && provider.is_some() {
            EXPORTING.store(true, Ordering::Relaxed);
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

/// Set once the span exporter is installed (feature `otel` with an endpoint).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether request spans are exported. Fields that only the exported span's attributes need
/// are recorded only then: each `span.record` also rewrites the span's fields for the log.
pub fn spans_exported() -> bool {
    EXPORTING.load(Ordering::Relaxed)
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
