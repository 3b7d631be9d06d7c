//! The in-memory answer cache and the coalescing of concurrent fetches.
//!
//! Guarantees:
//! - Entries are bounded by the sum of their weights (body bytes plus a fixed overhead), and
//!   each expires after the TTL its phase was given (`answer::Ttls`).
//! - At most one fetch per id is in flight. Requests that arrive while it runs wait for it and
//!   share its answer, cacheable or not. The fetch runs in its own task, so the client that
//!   started it can hang up without cancelling it for the others.
//!
//! Concurrency: the fetch task stores a cacheable answer *before* it leaves the in-flight map,
//! so a request always finds the id in one of the two — except in the instant between a
//! lookup miss and taking the map's lock, which the new leader covers by checking the cache
//! again before calling upstream.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use moka::{future::Cache, Expiry};
use tokio::sync::watch;

use crate::answer::{Answer, CacheStatus};

/// Bytes an entry costs beyond its body: the key, the `Answer` fields and moka's bookkeeping.
const ENTRY_OVERHEAD: usize = 256;

/// One completed fetch, as every waiter sees it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub answer: Arc<Answer>,
    /// `Miss` when stored, `Pass` when not, `Hit` when the leader found it already stored
    /// (here or in the shared level).
    pub cache: CacheStatus,
    pub upstream: Option<UpstreamReport>,
}

/// What one fetch produced, before it is stored.
pub struct Fetch {
    pub answer: Answer,
    /// The exchange with the API, when there was one.
    pub upstream: Option<UpstreamReport>,
    /// The answer came from the shared second level (Redis), not from the API.
    pub shared: bool,
}

/// What the upstream exchange behind a fetch looked like, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamReport {
    pub status: Option<u16>,
    pub error: Option<&'static str>,
    pub elapsed: Duration,
}

type Slot = watch::Receiver<Option<Fetched>>;

pub struct TaskCache {
    entries: Cache<Arc<str>, Arc<Answer>>,
    inflight: Mutex<HashMap<Arc<str>, Slot>>,
}

struct TtlOfAnswer;

impl Expiry<Arc<str>, Arc<Answer>> for TtlOfAnswer {
    // The lifetime left, not the whole TTL: an answer from the shared level is already old.
    fn expire_after_create(&self, _: &Arc<str>, a: &Arc<Answer>, _: Instant) -> Option<Duration> {
        a.ttl.map(|_| a.remaining())
    }

    // A re-fetched answer replaces the old one with its own lifetime.
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        a: &Arc<Answer>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        a.ttl.map(|_| a.remaining())
    }
}

impl TaskCache {
    pub fn new(max_bytes: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Arc<str>, a: &Arc<Answer>| {
                u32::try_from(k.len() + a.body.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(TtlOfAnswer)
            .build();
        Self {
            entries,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(&self, id: &str) -> Option<Arc<Answer>> {
        self.entries.get(id).await
    }

    pub async fn invalidate(&self, id: &str) {
        self.entries.invalidate(id).await;
    }

    /// Entries and weighted bytes, after pending housekeeping has run.
    pub async fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks().await;
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    /// Joins the fetch in flight for `id`, or starts one with `fetch`. Returns the shared
    /// outcome and whether this caller waited on someone else's fetch.
    pub async fn fetch_coalesced<F, Fut>(
        self: &Arc<Self>,
        id: &str,
        fetch: F,
    ) -> (Option<Fetched>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetch> + Send + 'static,
    {
        let (mut slot, coalesced) = {
            let mut inflight = self.inflight.lock().expect("inflight map lock poisoned");
            match inflight.get(id) {
                Some(slot) => (slot.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    let key: Arc<str> = Arc::from(id);
                    inflight.insert(key.clone(), rx.clone());
                    let fut = fetch();
                    let this = Arc::clone(self);
                    tokio::spawn(async move { this.lead(key, fut, tx).await });
                    (rx, false)
                }
            }
        };
        // `None` only if the fetch task died (a panic): the caller answers 500.
        let outcome = slot
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        (outcome, coalesced)
    }

    async fn lead<Fut>(
        self: Arc<Self>,
        key: Arc<str>,
        fetch: Fut,
        tx: watch::Sender<Option<Fetched>>,
    ) where
        Fut: Future<Output = Fetch>,
    {
        // Leaves the map however this task ends, so a panic cannot wedge the id forever.
        let _leave = LeaveOnDrop {
            cache: &self,
            key: &key,
        };
        let fetched = match self.entries.get(&key).await {
            Some(answer) => Fetched {
                answer,
                cache: CacheStatus::Hit,
                upstream: None,
            },
            None => {
                let Fetch {
                    answer,
                    upstream,
                    shared,
                } = fetch.await;
                let answer = Arc::new(compact(answer));
                let cache = if answer.is_cacheable() {
                    self.entries.insert(key.clone(), answer.clone()).await;
                    // Found in the shared level: a hit, only not in this replica's memory.
                    if shared {
                        CacheStatus::Hit
                    } else {
                        CacheStatus::Miss
                    }
                } else {
                    CacheStatus::Pass
                };
                Fetched {
                    answer,
                    cache,
                    upstream,
                }
            }
        };
        drop(_leave);
        // Waiters hold their own receivers; nobody listening is fine.
        let _ = tx.send(Some(fetched));
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

struct LeaveOnDrop<'a> {
    cache: &'a TaskCache,
    key: &'a Arc<str>,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.cache.inflight.lock() {
            inflight.remove(&**self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    use super::*;
    use crate::{answer::Policy, upstream::Reply};

    fn answer(body: Bytes) -> Answer {
        let policy = Policy {
            completed: Duration::from_secs(60),
            failed: Duration::from_secs(30),
            not_found: Duration::from_secs(5),
            pending: Duration::ZERO,
            redact: false,
        };
        let reply = Reply {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("application/json")),
            retry_after: None,
            body,
        };
        Answer::from_upstream(Ok(reply), &policy, b"key")
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
}
