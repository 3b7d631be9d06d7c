//! Log output: JSON lines by default, a human layout with `TASKGATE_LOG_FORMAT=pretty`.
//! Events carry fields, never headers, bodies or the key.

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use http::HeaderValue;

use crate::{config::LogFormat, ids::TraceContext};

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax; it was validated with
/// the configuration, so a parse failure here falls back to `info`.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .boxed(),
        LogFormat::Pretty => fmt::layer().compact().boxed(),
    };
    // A second init (tests starting several servers) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

/// Ties a request span to the client's trace (its `traceparent`, when valid) and returns the
/// span's own context: the trace id for logs and the parent of the upstream `traceparent`.
pub fn attach(_span: &tracing::Span, client: Option<&HeaderValue>) -> TraceContext {
    TraceContext::continue_or_start(client)
}
