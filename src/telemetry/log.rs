//! The log output: lines formatted without re-parsing span fields ([`SpanJson`]) and written
//! off the request path by a thread of its own, through a bounded queue whose overflow is
//! dropped and counted ([`log_events_dropped`]).

use std::{
    fmt::{self as stdfmt, Write as _},
    io::{self, Write},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, OnceLock, PoisonError,
    },
    time::Duration,
};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{
        self,
        format::{FormatFields, Writer},
        FormattedFields, MakeWriter,
    },
    EnvFilter, Layer,
};

use super::DynLayer;
use crate::{config::LogFormat, sync::lock};

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
pub(super) struct LogQueue {
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

/// Where the log layer writes: the queue of the writer thread. Each event is one
/// `write_all` of one whole line, so a line is queued whole or dropped whole.
#[derive(Clone)]
pub(super) struct LogWriter(Arc<LogQueue>);

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
pub(super) struct LogGuard {
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
pub(super) fn log_writer(sink: impl Write + Send + 'static, limit: usize) -> (LogWriter, LogGuard) {
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

impl LogWriter {
    /// The count of lines this writer dropped.
    pub(super) fn drops(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.0.dropped)
    }
}

/// Makes `drops` the count that [`log_events_dropped`] reads: the installed subscriber's.
pub(super) fn publish_drops(drops: Arc<AtomicU64>) {
    let _ = DROPPED.set(drops);
}

/// The log layer: `format` lines written by `writer`, filtered by `filter`.
pub(super) fn log_layer(format: LogFormat, filter: EnvFilter, writer: LogWriter) -> DynLayer {
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

#[cfg(test)]
mod tests {
    use tracing_subscriber::Registry;

    use crate::telemetry::{Metrics, Snapshot};

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
        let r = m.read(Snapshot::default());
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
