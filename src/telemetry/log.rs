//! The log output: lines formatted without re-parsing span fields ([`SpanJson`]) and written
//! off the request path by a thread of its own, through a bounded queue whose overflow is
//! dropped and counted ([`log_events_dropped`]).

use std::{
    cell::{Cell, RefCell},
    fmt::{self as stdfmt, Write as _},
    io::{self, Write},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, OnceLock, PoisonError,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{
        self,
        format::{FormatEvent, FormatFields, Writer},
        FmtContext, FormattedFields, MakeWriter,
    },
    registry::LookupSpan,
    EnvFilter, Layer,
};

use super::{request, DynLayer};
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
    pub(super) fn push(&self, line: &[u8]) {
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

    /// The queue this writer appends to.
    pub(super) fn queue(&self) -> Arc<LogQueue> {
        Arc::clone(&self.0)
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
            .fmt_fields(SpanJson)
            .event_format(JsonLines)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => fmt::layer().compact().with_writer(writer).boxed(),
    };
    // A per-layer filter rather than a global one: the span exporter has its own.
    log.with_filter(filter).boxed()
}

/// Span fields for the JSON log layer: one JSON object (`{"request_id":"…",…}`) that a later
/// `span.record` extends in place. `tracing-subscriber`'s own `JsonFields` parses the object
/// back into a map and re-serialises it for every recorded field; here only a field recorded
/// a second time takes that path ([`merge`]), so the object never holds a name twice and
/// [`JsonLines`] can copy it into a line as is.
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
        if !is_object(object) {
            // Nothing formatted yet (or not by us): start afresh.
            object.clear();
            object.push_str("{}");
        }
        let mut repeated = Repeated {
            object,
            found: false,
        };
        fields.record(&mut repeated);
        if repeated.found {
            return merge(object, fields);
        }
        object.pop();
        let first = object.len() == 1;
        let mut v = JsonObject::new(object, first);
        fields.record(&mut v);
        let result = v.result;
        object.push('}');
        result
    }
}

/// A field recorded a second time (rare: taskgate records each once): the object is parsed,
/// the new values replace the old, and it is written again, so it never holds a name twice.
fn merge(object: &mut String, fields: &tracing::span::Record<'_>) -> stdfmt::Result {
    let mut update = String::from("{");
    let mut v = JsonObject::new(&mut update, true);
    fields.record(&mut v);
    v.result?;
    update.push('}');
    let parse = |s: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(s);
    let (Ok(mut merged), Ok(update)) = (parse(object), parse(&update)) else {
        return Err(stdfmt::Error);
    };
    merged.extend(update);
    *object = serde_json::Value::Object(merged).to_string();
    Ok(())
}

/// Whether `s` has the shape of a JSON object as SpanJson writes one: `{…}`.
fn is_object(s: &str) -> bool {
    s.len() >= 2 && s.starts_with('{') && s.ends_with('}')
}

/// Whether a visited field is already a member of `object`.
struct Repeated<'a> {
    object: &'a str,
    found: bool,
}

impl Visit for Repeated<'_> {
    fn record_debug(&mut self, field: &Field, _: &dyn stdfmt::Debug) {
        self.found |= has_member(self.object, member_name(field.name()));
    }
}

/// Whether the JSON object `object` (as SpanJson writes it) has a member `name`: `"name":`
/// right after `{` or `,`. Inside a string every `"` is escaped, so a value cannot match.
fn has_member(object: &str, name: &str) -> bool {
    object.match_indices(name).any(|(at, _)| {
        let before = &object.as_bytes()[..at];
        let after = &object.as_bytes()[at + name.len()..];
        (before.ends_with(b"{\"") || before.ends_with(b",\"")) && after.starts_with(b"\":")
    })
}

/// A field's name as the JSON member's: a raw identifier (`r#type`) without its `r#`, as
/// `tracing-serde` writes it.
fn member_name(name: &str) -> &str {
    name.strip_prefix("r#").unwrap_or(name)
}

/// Events as JSON lines, laid out as `tracing-subscriber`'s JSON format with
/// `flatten_event(true)` and `with_current_span(true)` (the layout taskgate has always
/// printed): `{"timestamp":…,"level":…,"message":…,<fields>,"target":…,"span":{…,"name":…}}`.
///
/// Written by hand because that formatter cost about a third of a cache hit's CPU with access
/// events on (bench/compare.sh, BENCHMARKS.md): it formats the timestamp into a fresh
/// `String`, serialises every field through serde with a UTF-8 check per write, and parses
/// the current span's fields back from JSON. Here the timestamp's date and time of day are
/// formatted once per second (per thread), fields are escaped straight into the line, and the
/// span's object (kept valid and free of repeated names by [`SpanJson`]) is copied as is.
pub(super) struct JsonLines;

impl<S> FormatEvent<S, SpanJson> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanJson>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> stdfmt::Result {
        with_line(|line| {
            build_line(ctx, line, event)?;
            writer.write_str(line)
        })
    }
}

/// Runs `f` on this thread's line buffer, emptied: each thread builds its lines in one buffer
/// of its own, so a line costs no allocation. (tracing-core drops an event logged while a line
/// is built, from a field's `Debug` say; should one ever get here, it gets a buffer of its own
/// rather than a panic.)
pub(super) fn with_line<R>(f: impl FnOnce(&mut String) -> R) -> R {
    LINE.with(|cell| {
        let mut own = String::new();
        let mut shared = cell.try_borrow_mut();
        let line = match shared.as_deref_mut() {
            Ok(line) => line,
            Err(_) => &mut own,
        };
        line.clear();
        let r = f(line);
        if line.capacity() > LINE_KEPT {
            *line = String::new();
        }
        r
    })
}

/// A line's buffer larger than this (a huge field) is not kept for the next line.
const LINE_KEPT: usize = 16 << 10;

/// One event as a JSON object and a newline, appended to `line`.
fn build_line<S>(
    ctx: &FmtContext<'_, S, SpanJson>,
    line: &mut String,
    event: &Event<'_>,
) -> stdfmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let meta = event.metadata();
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line, SystemTime::now());
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push('"');
    let mut v = JsonObject::new(line, false);
    event.record(&mut v);
    v.result?;
    line.push_str(",\"target\":\"");
    escape_json(line, meta.target());
    line.push('"');
    let span = event
        .parent()
        .and_then(|id| ctx.span(id))
        .or_else(|| ctx.lookup_current());
    if let Some(span) = span {
        let ext = span.extensions();
        if let Some(object) = ext.get::<FormattedFields<SpanJson>>() {
            // `{…}` from SpanJson: the span's name goes in before the closing brace.
            let members = object
                .fields
                .strip_prefix('{')
                .and_then(|o| o.strip_suffix('}'))
                .unwrap_or_default();
            line.push_str(",\"span\":{");
            line.push_str(members);
            if !members.is_empty() {
                line.push(',');
            }
            line.push_str("\"name\":\"");
            escape_json(line, span.name());
            line.push_str("\"}");
        }
    } else {
        // No span: inside a request served without one, its fields as the span's.
        request::with_current(|fields| {
            if let Some(fields) = fields {
                line.push_str(",\"span\":{");
                fields.push_members(line);
                line.push_str(",\"name\":\"");
                line.push_str(request::SPAN_NAME);
                line.push_str("\"}");
            }
        });
    }
    line.push_str("}\n");
    Ok(())
}

thread_local! {
    /// The line being built on this thread.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The second last formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS.`.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// `t` in RFC 3339, UTC, to the microsecond: `2026-12-04T03:30:02.575029Z` (the format of
/// `tracing-subscriber`'s `SystemTime`).
pub(super) fn push_timestamp(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        prefix = date_time_prefix(secs);
        SECOND.set((secs, prefix));
    }
    let mut micros = [0; 6];
    put_digits(&mut micros, since.subsec_micros().into());
    // Built from ASCII digits and separators only.
    out.push_str(std::str::from_utf8(&prefix).unwrap_or_default());
    out.push_str(std::str::from_utf8(&micros).unwrap_or_default());
    out.push('Z');
}

/// Writes `n` into `out` as decimal digits, zero-padded to its length (higher digits dropped).
fn put_digits(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` after the Unix epoch (UTC; years 1970 to 9999).
fn date_time_prefix(secs: u64) -> [u8; 20] {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + u64::from(month <= 2)).min(9999);
    let mut out = *b"0000-00-00T00:00:00.";
    put_digits(&mut out[0..4], year);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], of_day / 3600);
    put_digits(&mut out[14..16], of_day / 60 % 60);
    put_digits(&mut out[17..19], of_day % 60);
    out
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
        self.out.push_str(if self.first { "\"" } else { ",\"" });
        self.first = false;
        // Field names are identifiers, but `tracing` accepts any string literal as one.
        escape_json(self.out, member_name(field.name()));
        self.out.push_str("\":");
    }
}

/// A string member whose name is written with its quotes and separators as one literal:
/// `key` (`,"name":"`), then `value` escaped and the closing quote.
pub(super) fn push_str_member(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    escape_json(out, value);
    out.push('"');
}

/// `value` as a JSON number, as serde_json writes it: the shortest digits that read back as
/// `value`, still a float to a typed reader (`2.0`, not `2`), `null` when not finite.
pub(super) fn push_f64(out: &mut String, value: f64) {
    if value.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(value));
    } else {
        out.push_str("null");
    }
}

impl Visit for JsonObject<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        push_f64(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.out.push_str(itoa::Buffer::new().format(value));
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
pub(super) fn escape_json(out: &mut String, s: &str) {
    // Most values (ids, routes, phases) need no escape: they are copied in one piece.
    let mut start = clean_prefix(s.as_bytes());
    out.push_str(&s[..start]);
    if start == s.len() {
        return;
    }
    for (i, b) in s.bytes().enumerate().skip(start) {
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

/// How many bytes at the start of `b` need no JSON escape (not `"`, `\\`, nor a control
/// byte); eight at a time.
fn clean_prefix(b: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether some byte of `x` is below `n` (n <= 0x80): exact as a yes/no, the classic
    // bit trick (a byte >= 0x80 is never flagged, as `!x` clears its high bit).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS != 0;
    let mut i = 0;
    while let Some(word) = b.get(i..i + 8) {
        let x = u64::from_ne_bytes(word.try_into().expect("eight bytes"));
        if below(x, 0x20) || below(x ^ (ONES * 0x22), 1) || below(x ^ (ONES * 0x5c), 1) {
            break;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .take_while(|&&c| c >= 0x20 && c != b'"' && c != b'\\')
        .count()
}

/// What `f` logs through the JSON log layer (filter `info`), written out.
#[cfg(test)]
pub(super) fn capture(f: impl FnOnce()) -> String {
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    let kept = Kept::default();
    let (writer, guard) = log_writer(kept.clone(), 1 << 20);
    let layer = log_layer(LogFormat::Json, EnvFilter::new("info"), writer);
    tracing::subscriber::with_default(tracing_subscriber::Registry::default().with(layer), f);
    drop(guard); // writes out the queue
    let out = lock(&kept.0).clone();
    String::from_utf8(out).expect("lines are UTF-8")
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

    /// A field whose `Debug` logs an event of its own.
    struct Chatty;

    impl stdfmt::Debug for Chatty {
        fn fmt(&self, f: &mut stdfmt::Formatter<'_>) -> stdfmt::Result {
            tracing::warn!(inner = true, "logged while a line is built");
            f.write_str("chatty")
        }
    }

    #[test]
    fn lines_are_whole_and_apart_with_an_event_logged_while_one_is_built() {
        let sink = Gate::default();
        sink.open();
        let (writer, guard) = log_writer(sink.clone(), LOG_QUEUE_BYTES);
        tracing::subscriber::with_default(subscriber(writer), || {
            tracing::info!(field = ?Chatty, n = 1, "outer");
            tracing::info!(n = 2, "after");
            let long = "x".repeat(LINE_KEPT * 2);
            tracing::info!(long = long.as_str(), n = 3, "long");
            tracing::info!(n = 4, "after the long one");
        });
        drop(guard);
        let lines = sink.lines();
        let messages: Vec<_> = lines.iter().map(|l| l["message"].clone()).collect();
        // tracing does not dispatch an event from inside another one's formatting, or does
        // and gets a line of its own; either way the outer line is whole and the next clean.
        assert!(
            messages == ["outer", "after", "long", "after the long one"]
                || messages
                    == [
                        "logged while a line is built",
                        "outer",
                        "after",
                        "long",
                        "after the long one"
                    ],
            "{lines:?}"
        );
        let outer = lines.iter().find(|l| l["message"] == "outer").unwrap();
        assert_eq!(outer["field"], "chatty");
        assert_eq!(outer["n"], 1);
        let long = lines.iter().find(|l| l["message"] == "long").unwrap();
        assert_eq!(long["long"].as_str().unwrap().len(), LINE_KEPT * 2);
        assert_eq!(lines.last().unwrap()["n"], 4);
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

    #[derive(Debug)]
    #[allow(dead_code)] // read through Debug only
    struct Shape {
        name: &'static str,
        sizes: [u8; 2],
    }

    #[test]
    fn events_are_laid_out_as_tracing_subscribers_json_format() {
        // The hand-written lines and tracing-subscriber's own JSON formatter, configured as
        // taskgate configured it before, side by side on the same events.
        let sink = Gate::default();
        sink.open();
        let (ours, guard) = log_writer(sink.clone(), LOG_QUEUE_BYTES);
        let theirs = Gate::default();
        theirs.open();
        let (reference_writer, reference_guard) = log_writer(theirs.clone(), LOG_QUEUE_BYTES);
        let reference = fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .fmt_fields(SpanJson)
            .with_writer(reference_writer);
        let sub = Registry::default()
            .with(log_layer(LogFormat::Json, EnvFilter::new("trace"), ours))
            .with(reference);
        tracing::subscriber::with_default(sub, || {
            tracing::info!("plain");
            tracing::warn!(target: "taskgate::access", n = -3, u = 7u64, lo = i64::MIN,
                hi = u64::MAX, zero = 0u64, f = 1.25, whole = 2.0,
                ok = false, s = "a \"q\" \\ \n\t\u{1} é", none = Option::<&str>::None,
                r#type = "raw", shape = ?Shape { name: "x\"y", sizes: [1, 2] },
                shown = %"display", "request {} of {}", 1, 2);
            let span = tracing::info_span!(
                "request",
                request_id = tracing::field::display("r-1"),
                status = tracing::field::Empty,
                cache = tracing::field::Empty,
            );
            span.record("status", 200);
            span.in_scope(|| {
                tracing::error!(error = "boom", "inside");
                let inner = tracing::debug_span!("fetch", attempt = 1);
                inner.in_scope(|| tracing::trace!("nested"));
            });
            span.record("cache", "HIT");
            span.record("status", 304);
            span.in_scope(|| tracing::info!("after the records"));
            let empty = tracing::info_span!("bare");
            empty.in_scope(|| tracing::info!(x = 1, "in a span without fields"));
        });
        drop(guard);
        drop(reference_guard);
        let objects = |gate: &Gate| -> Vec<_> {
            gate.lines()
                .into_iter()
                .map(|v| v.as_object().unwrap().clone())
                .collect()
        };
        let (ours, theirs) = (objects(&sink), objects(&theirs));
        assert_eq!(ours.len(), 6);
        assert_eq!(ours.len(), theirs.len());
        for (mut a, mut b) in ours.into_iter().zip(theirs) {
            let (ta, tb) = (
                a.remove("timestamp").unwrap(),
                b.remove("timestamp").unwrap(),
            );
            for t in [&ta, &tb] {
                let t = t.as_str().unwrap();
                assert_eq!(t.len(), 27, "{t}");
                assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.');
            }
            assert_eq!(a, b);
        }
        // The later record replaced the earlier value instead of repeating the name.
        let raw = String::from_utf8(sink.state.0.lock().unwrap().1.clone()).unwrap();
        let after = raw
            .lines()
            .find(|l| l.contains("after the records"))
            .unwrap();
        assert_eq!(after.matches("\"status\":").count(), 1, "{after}");
        assert!(after.contains("\"status\":304"), "{after}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_microsecond() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (951_868_799, "2000-02-29T23:59:59."),
            (1_798_943_402, "2027-01-03T02:30:02."),
            (4_102_444_799, "2099-12-31T23:59:59."),
            (4_107_542_400, "2100-03-01T00:00:00."),
            (253_402_300_799, "9999-12-31T23:59:59."),
        ] {
            assert_eq!(std::str::from_utf8(&date_time_prefix(secs)).unwrap(), want);
        }
        let mut out = String::new();
        push_timestamp(
            &mut out,
            UNIX_EPOCH + Duration::new(1_798_943_402, 5_007_999),
        );
        assert_eq!(out, "2027-01-03T02:30:02.005007Z");
        // The per-thread cache of the second is keyed by the second.
        out.clear();
        push_timestamp(&mut out, UNIX_EPOCH + Duration::new(1_798_943_403, 0));
        assert_eq!(out, "2027-01-03T02:30:03.000000Z");
        out.clear();
        push_timestamp(
            &mut out,
            UNIX_EPOCH + Duration::new(1_798_943_403, 999_999_999),
        );
        assert_eq!(out, "2027-01-03T02:30:03.999999Z");
    }

    #[test]
    fn only_a_whole_object_is_extended() {
        assert!(is_object("{}"));
        assert!(is_object(r#"{"a":1}"#));
        for not in ["", "{", "}", "x}", "{x", "[]"] {
            assert!(!is_object(not), "{not:?}");
        }
    }

    #[test]
    fn a_member_is_found_only_as_a_name() {
        let object = r#"{"status":200,"cache":"x\",\"route\":1","id":"status"}"#;
        assert!(has_member(object, "status"));
        assert!(has_member(object, "cache"));
        assert!(has_member(object, "id"));
        assert!(!has_member(object, "route"), "inside a string value");
        assert!(!has_member(object, "stat"));
        assert!(!has_member(object, "tatus"));
        assert!(!has_member("{}", "status"));
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
    fn the_clean_prefix_ends_at_the_first_byte_to_escape() {
        let specials = [b'"', b'\\', 0x00, 0x0a, 0x1f];
        for len in 0..24 {
            let plain: Vec<u8> = (0..len).map(|i| b"a-Z9 \x7f"[i % 6]).collect();
            assert_eq!(clean_prefix(&plain), len);
            for at in 0..len {
                for special in specials {
                    let mut b = plain.clone();
                    b[at] = special;
                    assert_eq!(clean_prefix(&b), at, "{b:?}");
                }
            }
        }
        // Neighbours of the specials, and UTF-8 (bytes >= 0x80), are clean.
        let near = "! # [ ] \u{20} é ☃ 𝄞 ~\u{7f}".as_bytes();
        assert_eq!(clean_prefix(near), near.len());
    }

    #[test]
    fn json_escaping() {
        let mut out = String::new();
        escape_json(&mut out, "plain é \" \\ \n \r \t \u{0} \u{1f} end");
        assert_eq!(out, r#"plain é \" \\ \n \r \t \u0000 \u001f end"#);
    }

    #[test]
    fn a_field_named_by_any_string_still_makes_a_json_line() {
        let out = capture(|| tracing::info!("we\"ird\\name" = 1, "odd field"));
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).expect("one JSON line");
        assert_eq!(v["we\"ird\\name"], 1, "{out}");
    }
}
