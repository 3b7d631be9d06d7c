//! Watching a resource: `GET /{kind}/{id}/events` as Server-Sent Events (docs/push.md, "Push
//! updates to browsers").
//!
//! One watcher task per key, shared by all its subscribers, fetches it through the same
//! cache and coalesced fetch as `GET` once per `TASKGATE_WATCH_INTERVAL` (or at once when a
//! webhook asks), and publishes an event only when what its kind watches changed (the `status`;
//! for an asset also `playbackUrl` and `downloadUrl`). Each
//! subscriber streams from a `tokio::sync::watch` channel that holds only the latest event,
//! through a small bounded queue: a slow reader skips to the newest event instead of growing
//! memory. The watcher stops after a finished phase or an error, when its last subscriber
//! leaves, or at shutdown.
//!
//! Concurrency: subscribing and the watcher's decision to stop both happen under the map's
//! lock, so a subscriber can never join a watcher that has already decided to stop.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, watch, Notify};

use crate::{
    answer::{respond::EventStream, Answer},
    resource::{self, Key},
    sync::lock,
};

/// A comment line every 15 s keeps proxies and browsers from timing the stream out.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Frames queued per subscriber; past it the subscriber waits and then sees the latest event.
const QUEUE: usize = 4;

/// One event, already framed for the wire.
#[derive(Debug)]
pub struct Event {
    /// `status.updatedAt`, the SSE `id:`.
    pub id: Option<String>,
    pub frame: Bytes,
    /// The stream closes after this event (a finished phase, or an error).
    pub last: bool,
}

impl Event {
    /// The event for an answer, or `None` when what a watch compares (its kind's
    /// [`Kind::watched_fields`](resource::Kind::watched_fields): the `status`, and for an
    /// asset also its playback and download URLs) is what was already sent.
    fn from_answer(answer: &Answer, last_seen: &mut Option<serde_json::Value>) -> Option<Self> {
        if answer.status != StatusCode::OK {
            return Some(Self::new("error", None, &answer.body, true));
        }
        let Some(phase) = answer.phase else {
            let body = br#"{"errors":["the upstream answer is not a task or an asset"]}"#;
            return Some(Self::new("error", None, body, true));
        };
        let kind = phase.kind();
        let seen =
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&answer.body)
                .ok()
                .map(|mut body| {
                    let fields = kind
                        .watched_fields()
                        .iter()
                        .filter_map(|name| Some((name.to_string(), body.remove(*name)?)));
                    serde_json::Value::Object(fields.collect())
                });
        if seen.is_some() && *last_seen == seen {
            return None;
        }
        let id = resource::updated_at(&answer.body);
        *last_seen = seen;
        // `event: task`, `event: asset`.
        Some(Self::new(
            kind.as_str(),
            id,
            &answer.body,
            phase.is_finished(),
        ))
    }

    /// The last frame of a retired watcher: no data, a reconnection delay and a comment.
    fn retired() -> Self {
        let frame = format!("retry: {RETIRED_RETRY_MS}\n: retired: no change for a long time\n\n");
        Self {
            id: None,
            frame: Bytes::from(frame),
            last: true,
        }
    }

    fn new(kind: &str, id: Option<String>, data: &[u8], last: bool) -> Self {
        let mut f = BytesMut::with_capacity(data.len() + 64);
        f.put_slice(b"event: ");
        f.put_slice(kind.as_bytes());
        f.put_u8(b'\n');
        if let Some(id) = &id {
            // An id never holds a newline (it is a number), but be strict anyway.
            f.put_slice(b"id: ");
            f.put_slice(id.replace(['\n', '\r'], "").as_bytes());
            f.put_u8(b'\n');
        }
        // A data line cannot hold a newline: a multi-line body becomes several data lines.
        for line in data.split(|&b| b == b'\n') {
            f.put_slice(b"data: ");
            f.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
            f.put_u8(b'\n');
        }
        f.put_u8(b'\n');
        Self {
            id,
            frame: f.freeze(),
            last,
        }
    }
}

struct Watched {
    latest: watch::Sender<Option<Arc<Event>>>,
    refresh: Notify,
}

/// Why a new watch was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `TASKGATE_WATCH_MAX` ids are watched already.
    TooManyIds,
    /// This client holds `TASKGATE_WATCH_MAX_PER_CLIENT` streams already.
    TooManyFromClient,
}

/// A watcher whose resource has not changed for this many polls (5 minutes at the default
/// 2 s interval) ends its streams with a retry hint: a real page reconnects (and is counted
/// and budgeted again), an abandoned tab stops costing API calls.
pub const RETIRE_AFTER_POLLS: u32 = 150;
/// The reconnection delay a retired stream asks for (the SSE `retry:` field).
const RETIRED_RETRY_MS: u32 = 5_000;

pub struct Watchers {
    ids: Mutex<HashMap<Key, Arc<Watched>>>,
    /// Open streams per client key.
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
    max_per_client: usize,
    interval: Duration,
    retire_after: Duration,
    shutdown: watch::Sender<bool>,
    events_sent: Counter,
}

/// One client's stream, counted until its feed ends.
struct ClientStream {
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        let mut clients = lock(&self.clients);
        if let Some(n) = clients.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

impl Watchers {
    pub fn new(
        max: usize,
        max_per_client: usize,
        interval: Duration,
        events_sent: Counter,
    ) -> Self {
        Self {
            ids: Mutex::new(HashMap::new()),
            clients: Arc::default(),
            max,
            max_per_client,
            interval,
            retire_after: interval * RETIRE_AFTER_POLLS,
            shutdown: watch::channel(false).0,
            events_sent,
        }
    }

    /// Subscribes `client` to `key`, starting its watcher with `lookup` when it is the first.
    /// `lookup` answers as `GET` would (cache, then coalesced fetch).
    pub fn subscribe<F, Fut>(
        self: &Arc<Self>,
        key: Key,
        client: IpAddr,
        last_event_id: Option<String>,
        lookup: F,
    ) -> Result<EventStream, Refused>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Arc<Answer>> + Send + 'static,
    {
        let counted = {
            let mut clients = lock(&self.clients);
            let n = clients.entry(client).or_insert(0);
            if *n >= self.max_per_client {
                return Err(Refused::TooManyFromClient);
            }
            *n += 1;
            ClientStream {
                clients: Arc::clone(&self.clients),
                client,
            }
        };
        let rx = {
            let mut ids = lock(&self.ids);
            match ids.get(&key) {
                Some(w) => w.latest.subscribe(),
                None if ids.len() >= self.max => return Err(Refused::TooManyIds),
                None => {
                    let watched = Arc::new(Watched {
                        latest: watch::channel(None).0,
                        refresh: Notify::new(),
                    });
                    let rx = watched.latest.subscribe();
                    ids.insert(key, watched.clone());
                    tokio::spawn(Arc::clone(self).watch(key, watched, lookup));
                    rx
                }
            }
        };
        let (tx, queue) = mpsc::channel(QUEUE);
        let feed = feed(
            rx,
            tx,
            last_event_id,
            self.shutdown.subscribe(),
            self.events_sent.clone(),
        );
        tokio::spawn(async move {
            feed.await;
            drop(counted);
        });
        Ok(EventStream::new(queue))
    }

    /// Whether `key` has a watcher (a new stream would share its polls).
    pub fn is_watched(&self, key: &Key) -> bool {
        lock(&self.ids).contains_key(key)
    }

    /// Makes the key's watcher fetch again now (a webhook said it changed).
    pub fn refresh(&self, key: &Key) {
        if let Some(w) = lock(&self.ids).get(key) {
            w.refresh.notify_one();
        }
    }

    /// Ends every stream: shutdown must not wait on streams that never end by themselves.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// (ids watched, open subscriptions).
    pub fn counts(&self) -> (usize, usize) {
        let ids = lock(&self.ids);
        let subscribers = ids.values().map(|w| w.latest.receiver_count()).sum();
        (ids.len(), subscribers)
    }

    async fn watch<F, Fut>(self: Arc<Self>, key: Key, watched: Arc<Watched>, lookup: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Arc<Answer>> + Send + 'static,
    {
        let mut shutdown = self.shutdown.subscribe();
        let mut last_status = None;
        let mut changed_at = Instant::now();
        loop {
            let answer = tokio::select! {
                answer = lookup() => Some(answer),
                _ = watched.latest.closed() => None,
                _ = stopped(&mut shutdown) => None,
            };
            let mut finished = match answer.and_then(|a| Event::from_answer(&a, &mut last_status)) {
                Some(event) => {
                    changed_at = Instant::now();
                    let last = event.last;
                    watched.latest.send_replace(Some(Arc::new(event)));
                    last
                }
                None => false,
            };
            if !finished && changed_at.elapsed() >= self.retire_after {
                watched
                    .latest
                    .send_replace(Some(Arc::new(Event::retired())));
                finished = true;
            }
            if !finished {
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = watched.refresh.notified() => {}
                    _ = watched.latest.closed() => {}
                    _ = stopped(&mut shutdown) => {}
                }
            }
            let mut ids = lock(&self.ids);
            let abandoned = watched.latest.receiver_count() == 0;
            if finished || abandoned || *shutdown.borrow() {
                if ids.get(&key).is_some_and(|w| Arc::ptr_eq(w, &watched)) {
                    ids.remove(&key);
                }
                return;
            }
        }
    }
}

/// Resolves once shutdown has begun (the guard `wait_for` returns is dropped here: it must
/// not be held across an await).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Copies events to one subscriber's queue, with keep-alive comments in between.
async fn feed(
    mut rx: watch::Receiver<Option<Arc<Event>>>,
    tx: mpsc::Sender<Bytes>,
    mut skip_id: Option<String>,
    mut shutdown: watch::Receiver<bool>,
    events_sent: Counter,
) {
    loop {
        let current = rx.borrow_and_update().clone();
        if let Some(event) = current {
            // A reconnecting EventSource already has the event named by its Last-Event-ID.
            let seen = skip_id
                .take()
                .is_some_and(|id| event.id.as_deref() == Some(id.as_str()));
            if !seen {
                if tx.send(event.frame.clone()).await.is_err() {
                    return;
                }
                events_sent.inc();
            }
            if event.last {
                return;
            }
        }
        loop {
            tokio::select! {
                changed = rx.changed() => match changed {
                    Ok(()) => break,
                    Err(_) => return, // the watcher ended without a last event (shutdown)
                },
                _ = tokio::time::sleep(KEEP_ALIVE) => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                _ = stopped(&mut shutdown) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_body_becomes_several_data_lines() {
        let e = Event::new("task", Some("17".into()), b"{\n\"a\": 1\r\n}", false);
        assert_eq!(
            &e.frame[..],
            b"event: task\nid: 17\ndata: {\ndata: \"a\": 1\ndata: }\n\n"
        );
    }
}
