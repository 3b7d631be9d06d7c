//! The answer cache: this replica's memory, the shared level (Redis) behind it, and the
//! coalescing of concurrent fetches.
//!
//! Guarantees:
//! - Entries are bounded by the sum of their weights (body bytes plus a fixed overhead), and
//!   each expires after the lifetime its answer was given (`answer::Store`).
//! - At most one fetch per key is in flight. Requests that arrive while it runs wait for it and
//!   share its answer, cacheable or not. The fetch runs in the task of the request that started
//!   it and moves to a task of its own if that request goes away first, so the client that
//!   started it can hang up without cancelling it for the others.
//! - An invalidation wins over a fetch in flight: a fetch that was running when its key was
//!   invalidated answers its waiters but is stored at neither level.
//!
//! Concurrency: the fetch stores a cacheable answer and leaves the in-flight map under the
//! map's lock, and an invalidation marks the in-flight fetch and drops the entry under the same
//! lock, so each happens wholly before or after the other. A request always finds a key in the
//! cache or in the map — except in the instant between a lookup miss and taking the map's lock,
//! which a new leader covers by checking the cache again before fetching.

#[cfg(feature = "redis")]
mod redis;
mod shared;

use std::{
    collections::HashMap,
    future::Future,
    panic::{self, AssertUnwindSafe},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use moka::{sync::Cache as Moka, Expiry};
use tokio::sync::{futures::Notified, watch, Notify};

pub use shared::{namespace, SharedLevel};

use crate::{
    answer::{Answer, CacheStatus, NoStore, Store},
    resource::{self, Key},
    sync::lock,
    upstream::UpstreamReport,
};

/// Bytes an entry costs beyond its body: the key (inline in moka's entry), the `Arc<Answer>`
/// and its stored header values (content type, ETag, Retry-After), moka's per-entry records
/// (entry info, access- and write-order deque nodes, the timer-wheel node for the per-entry
/// expiry, hash-table bucket) and the allocator's own headers and rounding.
///
/// Measured, not estimated: `bash bench/memory.sh --entry-cost-only` puts 100 000 distinct
/// completed tasks (1247-byte bodies) into a 1 GiB cache (never full, so nothing is evicted)
/// and divides the RSS growth by the entries: 2197 B per entry with glibc's malloc, 2145 B
/// with jemalloc, 2139 B with mimalloc (2026-12-03, BENCHMARKS.md "Memory bound"), i.e. 950,
/// 898 and 892 B beside the body. The largest, rounded up, so that
/// `TASKGATE_CACHE_MAX_BYTES` bounds what the entries really hold whichever allocator runs.
/// (It was 256 until then: the cache held 2.2× its setting.)
const ENTRY_OVERHEAD: usize = 960;

/// One completed fetch, as every waiter sees it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub answer: Arc<Answer>,
    /// `Miss` when stored, `Pass` when not, `Hit` when the leader found it already stored
    /// (here or in the shared level).
    pub cache: CacheStatus,
    pub upstream: Option<UpstreamReport>,
    /// Why it was not stored, when it was fetched and not stored.
    pub no_store: Option<NoStore>,
}

/// What one call to the API produced.
pub struct Fetch {
    pub answer: Answer,
    pub upstream: UpstreamReport,
}

struct InFlight {
    slot: watch::Receiver<Option<Fetched>>,
    /// Set by an invalidation that arrived while the fetch ran.
    superseded: bool,
}

pub struct Cache {
    entries: Moka<Key, Arc<Answer>>,
    /// Versions (`status.updatedAt`) that webhooks announced: an older answer is never stored.
    announced: Moka<Key, u64>,
    inflight: Mutex<HashMap<Key, InFlight>>,
    /// Keys that requests wait to lead a fetch of (for a slot of their client's share), and
    /// how many wait: a fetch of one of them that starts wakes its waiters, and only them.
    leaders_waiting: Mutex<HashMap<Key, (Arc<Notify>, usize)>>,
    shared: SharedLevel,
}

/// How long an entry stays in memory: its lifetime left, plus the stale-if-error window for
/// answers that may be served stale (finished work, never 404s or the pending micro-cache).
struct TtlOfAnswer {
    stale_if_error: Duration,
}

impl TtlOfAnswer {
    fn keep(&self, a: &Answer) -> Option<Duration> {
        a.ttl()?;
        let stale = if a.may_be_served_stale() {
            self.stale_if_error
        } else {
            Duration::ZERO
        };
        Some(a.remaining() + stale)
    }
}

impl Expiry<Key, Arc<Answer>> for TtlOfAnswer {
    // The lifetime left, not the whole TTL: an answer from the shared level is already old.
    fn expire_after_create(&self, _: &Key, a: &Arc<Answer>, _: Instant) -> Option<Duration> {
        self.keep(a)
    }

    // A re-fetched answer replaces the old one with its own lifetime.
    fn expire_after_update(
        &self,
        _: &Key,
        a: &Arc<Answer>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.keep(a)
    }
}

/// What memory holds for a key.
pub enum Held {
    /// Within its lifetime: serve it.
    Fresh(Arc<Answer>),
    /// Past its lifetime, inside the stale-if-error window: refresh it, and serve it only if
    /// the refresh fails.
    Stale(Arc<Answer>),
    Nothing,
}

impl Cache {
    pub fn new(max_bytes: u64, stale_if_error: Duration, shared: SharedLevel) -> Self {
        let entries = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Key, a: &Arc<Answer>| {
                u32::try_from(a.body.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(TtlOfAnswer { stale_if_error })
            .build();
        Self {
            entries,
            // Remembered for an hour: longer than any sensible trust TTL, and an announcement
            // older than its answer's lifetime has done its job.
            announced: Moka::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            inflight: Mutex::new(HashMap::new()),
            leaders_waiting: Mutex::new(HashMap::new()),
            shared,
        }
    }

    pub fn shared(&self) -> &SharedLevel {
        &self.shared
    }

    /// This replica's answer for `key`, if it is within its lifetime.
    pub fn get(&self, key: &Key) -> Option<Arc<Answer>> {
        match self.lookup(key) {
            Held::Fresh(answer) => Some(answer),
            _ => None,
        }
    }

    /// This replica's answer for `key`, fresh or stale.
    pub fn lookup(&self, key: &Key) -> Held {
        match self.entries.get(key) {
            Some(answer) if answer.remaining().is_zero() => Held::Stale(answer),
            Some(answer) => Held::Fresh(answer),
            None => Held::Nothing,
        }
    }

    /// A webhook announced `version` of `key`: from now on an answer older than it is served
    /// to whoever waits for it but stored at neither level.
    pub fn announce(&self, key: &Key, version: u64) {
        self.announced
            .entry(*key)
            .and_upsert_with(|old| old.map_or(version, |e| (*e.value()).max(version)));
    }

    /// Whether `answer` is older than what a webhook announced for `key`.
    pub fn is_behind(&self, key: &Key, answer: &Answer) -> bool {
        let Some(announced) = self.announced.get(key) else {
            return false;
        };
        resource::updated_at(&answer.body)
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|version| version < announced)
    }

    /// Whether a fetch of `key` is in flight (a request now would wait for it, not call the API).
    pub fn is_in_flight(&self, key: &Key) -> bool {
        lock(&self.inflight).contains_key(key)
    }

    /// Registers a request that waits to lead a fetch of `key`: the returned watch's
    /// [`StartWatch::started`] completes when a fetch of `key` starts, so that the request can
    /// join it instead.
    pub fn watch_start(&self, key: Key) -> StartWatch<'_> {
        let notify = {
            let mut waiting = lock(&self.leaders_waiting);
            let (notify, count) = waiting
                .entry(key)
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            *count += 1;
            Arc::clone(notify)
        };
        StartWatch {
            cache: self,
            key,
            notify,
        }
    }

    /// Drops `key` from this replica's memory, and makes a fetch of it in flight store nothing.
    pub fn invalidate(&self, key: &Key) {
        let mut inflight = lock(&self.inflight);
        if let Some(f) = inflight.get_mut(key) {
            f.superseded = true;
        }
        self.entries.invalidate(key);
    }

    /// Entries and weighted bytes, after pending housekeeping has run.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    /// Joins the fetch in flight for `key`, or leads one: the shared level first, then
    /// `fetch` (the API). Returns the shared outcome (`None` only if the fetch panicked) and
    /// whether this caller waited on someone else's fetch.
    pub async fn fetch_coalesced<F, Fut>(
        self: &Arc<Self>,
        key: Key,
        fetch: F,
    ) -> (Option<Fetched>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetch> + Send + 'static,
    {
        let (mut slot, leading) = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(f) => (f.slot.clone(), None),
                None => {
                    // Built before the key is marked in flight: should building it panic, the
                    // key is not left behind with nobody to remove it. Boxed here, and the
                    // lead below boxed without a wrapper: a future is copied whole on every
                    // move, and nested in the lead's state it was copied three times over
                    // (about 10 KiB copied per fetch, measured with callgrind).
                    let fut = Box::pin(fetch());
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(
                        key,
                        InFlight {
                            slot: rx.clone(),
                            superseded: false,
                        },
                    );
                    if let Some((waiters, _)) = lock(&self.leaders_waiting).get(&key) {
                        waiters.notify_waiters();
                    }
                    let lead: Pin<Box<dyn Future<Output = ()> + Send>> =
                        Box::pin(Arc::clone(self).lead(key, fut, tx));
                    (rx, Some(Leading { lead: Some(lead) }))
                }
            }
        };
        let coalesced = leading.is_none();
        if let Some(leading) = leading {
            // The leader runs the fetch in its own task: no spawn, and no wake-up from
            // another task when the answer is in.
            leading.await;
        }
        let outcome = slot
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        (outcome, coalesced)
    }

    async fn lead<Fut>(self: Arc<Self>, key: Key, fetch: Fut, tx: watch::Sender<Option<Fetched>>)
    where
        Fut: Future<Output = Fetch>,
    {
        // Leaves the map however this task ends, so a panic cannot wedge the key forever.
        let mut leave = LeaveOnDrop {
            cache: &self,
            key,
            armed: true,
        };
        if let Some(answer) = self.get(&key) {
            drop(leave);
            let _ = tx.send(Some(Fetched {
                answer,
                cache: CacheStatus::Hit,
                upstream: None,
                no_store: None,
            }));
            return;
        }
        let from_level = self.shared.get(key).await;
        let (answer, upstream, from_shared) = match from_level.filter(|a| !self.is_behind(&key, a))
        {
            Some(answer) => (answer, None, true),
            None => {
                let Fetch { answer, upstream } = fetch.await;
                (answer, Some(upstream), false)
            }
        };
        let mut answer = compact(answer);
        // Store and leave the map in one step under the lock (see the module's concurrency note).
        let stored = {
            let mut inflight = lock(&self.inflight);
            let superseded = inflight.remove(&key).is_some_and(|f| f.superseded);
            leave.armed = false;
            if superseded && answer.is_cacheable() {
                answer.store = Store::Pass(NoStore::Superseded);
            } else if answer.is_cacheable() && self.is_behind(&key, &answer) {
                answer.store = Store::Pass(NoStore::Behind);
            }
            let answer = Arc::new(answer);
            if answer.is_cacheable() {
                self.entries.insert(key, Arc::clone(&answer));
            } else if !answer.is_upstream_failure() {
                // The API answered, and not with something to keep: an answer kept for
                // stale-if-error is now wrong (a retried task runs again, a 404 with the
                // negative cache off).
                self.entries.invalidate(&key);
            }
            answer
        };
        if stored.is_shared() && !from_shared {
            // Written beside the reply, so no client waits on Redis.
            self.shared.put(key, Arc::clone(&stored));
        }
        let cache = match (stored.is_cacheable(), from_shared) {
            // Found in the shared level: a hit, only not in this replica's memory.
            (true, true) => CacheStatus::Hit,
            (true, false) => CacheStatus::Miss,
            (false, _) => CacheStatus::Pass,
        };
        // Waiters hold their own receivers; nobody listening is fine.
        let _ = tx.send(Some(Fetched {
            no_store: stored.no_store(),
            answer: stored,
            cache,
            upstream,
        }));
    }
}

/// A body read from the API is a slice of the connection's read buffer (8 KiB or more), and
/// the whole buffer stays allocated as long as the slice lives. An answer about to be kept
/// for hours gets a copy of its own, sized to the body: one ~1 KB copy per stored miss, which
/// keeps memory per cached task near its size (measured: 12 KiB per task before this).
fn compact(mut answer: Answer) -> Answer {
    if answer.is_cacheable() {
        answer.body = bytes::Bytes::copy_from_slice(&answer.body);
    }
    answer
}

/// The leader's fetch, run inline in the leader's own task. Should the leader go away first
/// (its client hung up and hyper dropped the request), what is left of the fetch is handed to
/// a task of its own, so the requests waiting on it still get their answer. A panic inside
/// it is caught here: the waiters see the fetch die (`None`), as they would with a task.
struct Leading {
    lead: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Future for Leading {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(lead) = self.lead.as_mut() else {
            return Poll::Ready(());
        };
        match panic::catch_unwind(AssertUnwindSafe(|| lead.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) | Err(_) => {
                self.lead = None;
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        // Outside a runtime (one shutting down), there is nobody left to answer.
        if let (Some(lead), Ok(runtime)) = (self.lead.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(lead);
        }
    }
}

/// A request waiting to lead a fetch of its key (see [`Cache::watch_start`]).
pub struct StartWatch<'a> {
    cache: &'a Cache,
    key: Key,
    notify: Arc<Notify>,
}

impl StartWatch<'_> {
    /// Completes when a fetch of the key starts after this call and the future's `enable`
    /// (or first poll).
    pub fn started(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for StartWatch<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(&self.cache.leaders_waiting);
        if let Some((_, count)) = waiting.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.key);
            }
        }
    }
}

struct LeaveOnDrop<'a> {
    cache: &'a Cache,
    key: Key,
    armed: bool,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.cache.inflight).remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    use super::*;
    use crate::{answer::Policy, resource::Kind, upstream::Reply};

    fn answer(body: Bytes) -> Answer {
        let policy = Policy {
            completed: Duration::from_secs(60),
            failed: Duration::from_secs(30),
            asset_ready: Duration::from_secs(60),
            not_found: Duration::from_secs(5),
            pending: Duration::ZERO,
            trusted_unfinished: Duration::ZERO,
            redact: false,
        };
        let reply = Reply {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("application/json")),
            retry_after: None,
            body,
        };
        Answer::from_upstream(Kind::Task, Ok(reply), &policy, b"key")
    }

    #[test]
    fn a_kept_body_does_not_pin_the_buffer_it_was_read_into() {
        // As hyper hands it over: a slice of a larger read buffer.
        let mut buffer = br#"{"id":"t1","status":{"phase":"completed"}}"#.to_vec();
        buffer.resize(8192, b' ');
        let buffer = Bytes::from(buffer);
        let slice = buffer.slice(..42);
        let kept = compact(answer(slice.clone()));
        assert!(kept.is_cacheable());
        assert_eq!(kept.body, slice);
        assert_ne!(kept.body.as_ptr(), slice.as_ptr(), "a copy of its own");

        // An answer that is not kept is left as it is: no copy for a pass-through.
        let running = Bytes::from_static(br#"{"id":"t1","status":{"phase":"running"}}"#);
        let passed = compact(answer(running.clone()));
        assert_eq!(passed.body.as_ptr(), running.as_ptr());
    }

    fn completed(id: &str) -> Fetch {
        Fetch {
            answer: answer(Bytes::from(format!(
                r#"{{"id":"{id}","status":{{"phase":"completed"}}}}"#
            ))),
            upstream: UpstreamReport::default(),
        }
    }

    type Outcome = (Option<Fetched>, bool);

    /// An empty cache and the key the tests fetch.
    fn cache_and_key() -> (Arc<Cache>, Key) {
        let cache = Arc::new(Cache::new(1 << 20, Duration::ZERO, SharedLevel::off()));
        (cache, Key::new(Kind::Task, "t1").unwrap())
    }

    /// A request leading the fetch of `key` (the fetch waits for `wait` before `then`), in a
    /// task of its own, running once the fetch is in flight. Gives the task's id beside the
    /// outcome, and the id of the task the fetch ran in.
    async fn lead(
        cache: &Arc<Cache>,
        key: Key,
        wait: tokio::sync::oneshot::Receiver<()>,
        then: impl FnOnce() -> Fetch + Send + 'static,
    ) -> (
        tokio::task::JoinHandle<(tokio::task::Id, Outcome)>,
        tokio::sync::oneshot::Receiver<tokio::task::Id>,
    ) {
        let (fetched_in, task_of_fetch) = tokio::sync::oneshot::channel();
        let leader = {
            let cache = Arc::clone(cache);
            tokio::spawn(async move {
                let got = cache
                    .fetch_coalesced(key, move || async move {
                        let _ = fetched_in.send(tokio::task::id());
                        let _ = wait.await;
                        then()
                    })
                    .await;
                (tokio::task::id(), got)
            })
        };
        while !cache.is_in_flight(&key) {
            tokio::task::yield_now().await;
        }
        (leader, task_of_fetch)
    }

    /// A request that joins the fetch in flight for `key`, in a task of its own.
    fn join(cache: &Arc<Cache>, key: Key) -> tokio::task::JoinHandle<Outcome> {
        let cache = Arc::clone(cache);
        tokio::spawn(async move {
            cache
                .fetch_coalesced(key, || async { unreachable!("joins, never fetches") })
                .await
        })
    }

    #[tokio::test]
    async fn the_fetch_outlives_its_leader_for_the_requests_waiting_on_it() {
        let (cache, key) = cache_and_key();
        let (release, wait) = tokio::sync::oneshot::channel();
        let (leader, _) = lead(&cache, key, wait, || completed("t1")).await;
        let waiter = join(&cache, key);
        // The leader's client hangs up: hyper drops its request, fetch and all.
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        release
            .send(())
            .expect("the fetch is still waiting to be released");
        let (fetched, coalesced) = waiter.await.unwrap();
        assert!(coalesced);
        let fetched = fetched.expect("the fetch finished in a task of its own");
        assert_eq!(fetched.cache, CacheStatus::Miss);
        assert!(cache.get(&key).is_some(), "and was stored");
        assert!(!cache.is_in_flight(&key));
    }

    #[tokio::test]
    async fn the_leader_fetches_in_its_own_task_and_waiters_join_it() {
        let (cache, key) = cache_and_key();
        let (release, wait) = tokio::sync::oneshot::channel();
        let (leader, task_of_fetch) = lead(&cache, key, wait, || completed("t1")).await;
        let waiter = join(&cache, key);
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        let (leader_task, (got, coalesced)) = leader.await.unwrap();
        assert_eq!(
            task_of_fetch.await.unwrap(),
            leader_task,
            "no hand-over to another task while the leader is there"
        );
        assert!(!coalesced);
        assert_eq!(got.unwrap().cache, CacheStatus::Miss);
        let (joined, coalesced) = waiter.await.unwrap();
        assert!(coalesced);
        assert_eq!(joined.unwrap().cache, CacheStatus::Miss);
    }

    #[tokio::test]
    async fn a_fetch_start_wakes_the_requests_waiting_to_lead_its_key_only() {
        let (cache, key) = cache_and_key();
        let other = Key::new(Kind::Task, "t2").unwrap();
        let watch = cache.watch_start(key);
        let second = cache.watch_start(key);
        {
            let started = watch.started();
            tokio::pin!(started);
            started.as_mut().enable();
            cache
                .fetch_coalesced(other, || async { completed("t2") })
                .await;
            let quiet = tokio::time::timeout(Duration::from_millis(50), started.as_mut()).await;
            assert!(quiet.is_err(), "a fetch of another key wakes nobody here");
            cache
                .fetch_coalesced(key, || async { completed("t1") })
                .await;
            tokio::time::timeout(Duration::from_secs(5), started)
                .await
                .expect("a fetch of its key wakes it");
        }
        drop(watch);
        assert!(
            lock(&cache.leaders_waiting).contains_key(&key),
            "one still waits"
        );
        drop(second);
        assert!(
            lock(&cache.leaders_waiting).is_empty(),
            "nothing left behind"
        );
    }

    #[tokio::test]
    async fn a_fetch_that_cannot_be_built_leaves_no_key_behind() {
        let (cache, key) = cache_and_key();
        let building = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                cache
                    .fetch_coalesced(key, || -> std::future::Ready<Fetch> {
                        panic!("a bug while building the fetch")
                    })
                    .await
            })
        };
        assert!(building.await.unwrap_err().is_panic());
        assert!(!cache.is_in_flight(&key));
        let (next, coalesced) = cache
            .fetch_coalesced(key, || async { completed("t1") })
            .await;
        assert!(!coalesced);
        assert_eq!(next.unwrap().cache, CacheStatus::Miss);
    }

    #[tokio::test]
    async fn a_fetch_that_panics_fails_its_requests_and_frees_its_key() {
        let (cache, key) = cache_and_key();
        let (release, wait) = tokio::sync::oneshot::channel();
        let (leader, _) = lead(&cache, key, wait, || panic!("a bug in the fetch")).await;
        let waiter = join(&cache, key);
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        // The leader's request is answered (no panic reaches its connection), as is the waiter's.
        assert!(matches!(leader.await.unwrap().1, (None, false)));
        assert!(matches!(waiter.await.unwrap(), (None, true)));
        assert!(
            !cache.is_in_flight(&key),
            "the key is free for the next fetch"
        );
        let (next, _) = cache
            .fetch_coalesced(key, || async { completed("t1") })
            .await;
        assert_eq!(next.unwrap().cache, CacheStatus::Miss);
    }

    #[tokio::test]
    async fn an_invalidation_during_a_fetch_keeps_its_answer_out_of_the_cache() {
        let (cache, key) = cache_and_key();
        let (release, wait) = tokio::sync::oneshot::channel();
        // Let the fetch start, then invalidate while it is in flight.
        let (fetching, _) = lead(&cache, key, wait, || completed("t1")).await;
        cache.invalidate(&key);
        release.send(()).unwrap();
        let (_, (fetched, _)) = fetching.await.unwrap();
        let fetched = fetched.unwrap();
        assert_eq!(fetched.cache, CacheStatus::Pass, "served to its waiters");
        assert_eq!(fetched.no_store, Some(NoStore::Superseded));
        assert!(cache.get(&key).is_none(), "and stored nowhere");
    }
}
