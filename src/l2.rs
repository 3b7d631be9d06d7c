//! The shared second level: finished answers (and 404s) in Redis, for many replicas
//! (SPEC "Replicas: the shared second level").
//!
//! Guarantees:
//! - Redis never fails a request and never stalls one past `TASKGATE_REDIS_TIMEOUT`: a slow,
//!   down, full or confused Redis is a miss, counted in `taskgate_l2_*` and logged at most
//!   once per [`LOG_EVERY`].
//! - Answers are stored under `taskgate:v1:task:{id}` with the lifetime they have left, in
//!   [`Answer::encode`]'s versioned encoding; a value that does not decode is a miss.
//! - Purges and webhooks delete the key and publish the id on `taskgate:v1:invalidate`; every
//!   replica listens there (resubscribing after any loss) and drops the id from memory.
//!
//! The connection is made lazily and re-made by itself (redis' `ConnectionManager`), so
//! taskgate starts and serves while Redis is down.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use redis::{aio::ConnectionManager, AsyncCommands, SetExpiry, SetOptions};

use crate::{answer::Answer, metrics::Metrics};

pub const INVALIDATE_CHANNEL: &str = "taskgate:v1:invalidate";
/// Errors are logged at most this often (the counters see every one).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// An error's kind only: a Redis URL holds the password, and must never reach a log line.
fn describe(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

/// The client for `url`, parsed without connecting; on error, only the error's kind (the
/// message may quote the URL, which can hold a password). Also used to check the setting.
pub(crate) fn client(url: &str) -> Result<redis::Client, String> {
    redis::Client::open(url).map_err(|e| describe(&e))
}

fn key(id: &str) -> String {
    format!("taskgate:v1:task:{id}")
}

pub struct L2 {
    client: redis::Client,
    con: ConnectionManager,
    timeout: Duration,
    metrics: Arc<Metrics>,
    last_logged_ms: AtomicU64,
}

impl L2 {
    /// Builds the client; no connection is made until the first command.
    pub fn new(url: &str, timeout: Duration, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = client(url).map_err(|kind| format!("TASKGATE_REDIS_URL: {kind}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            // Retried in the background; a request never waits for a reconnect.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let con = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("TASKGATE_REDIS_URL: {}", describe(&e)))?;
        Ok(Self {
            client,
            con,
            timeout,
            metrics,
            last_logged_ms: AtomicU64::new(0),
        })
    }

    /// A shared answer for `id`, or `None` (absent, unreadable, or Redis unavailable).
    pub async fn get(&self, id: &str) -> Option<Answer> {
        let mut con = self.con.clone();
        let got: Option<Option<Vec<u8>>> = self
            .bounded("get", async move { con.get(key(id)).await })
            .await;
        match got {
            Some(Some(bytes)) => match Answer::decode(&bytes) {
                Some(answer) => {
                    self.metrics.l2("get", "hit");
                    Some(answer)
                }
                None => {
                    self.metrics.l2("get", "undecodable");
                    self.log("a shared value could not be decoded; treated as a miss");
                    None
                }
            },
            Some(None) => {
                self.metrics.l2("get", "miss");
                None
            }
            None => None,
        }
    }

    /// Stores a shared answer for the lifetime it has left.
    pub async fn put(&self, id: &str, answer: &Answer) {
        let left = answer.remaining().as_millis() as u64;
        if left == 0 {
            return;
        }
        let value = answer.encode();
        let mut con = self.con.clone();
        let options = SetOptions::default().with_expiration(SetExpiry::PX(left));
        let stored: Option<()> = self
            .bounded("set", async move {
                con.set_options(key(id), value, options).await
            })
            .await;
        if stored.is_some() {
            self.metrics.l2("set", "ok");
        }
    }

    /// Deletes the key and tells every replica to drop the id.
    pub async fn invalidate(&self, id: &str) {
        let mut con = self.con.clone();
        let done: Option<()> = self
            .bounded("invalidate", async move {
                let _: () = redis::pipe()
                    .del(key(id))
                    .ignore()
                    .publish(INVALIDATE_CHANNEL, id)
                    .ignore()
                    .query_async(&mut con)
                    .await?;
                Ok(())
            })
            .await;
        if done.is_some() {
            self.metrics.l2("invalidate", "ok");
        }
    }

    /// Listens on the invalidation channel for as long as the process runs, calling `drop_id`
    /// for each id published, and subscribing again after any loss of the connection.
    pub async fn listen<F, Fut>(self: Arc<Self>, drop_id: F)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        use futures_util::StreamExt as _;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(INVALIDATE_CHANNEL).await {
                    Ok(()) => {
                        tracing::info!(channel = INVALIDATE_CHANNEL, "l2: subscribed");
                        delay = Duration::from_millis(100);
                        let mut messages = pubsub.into_on_message();
                        while let Some(msg) = messages.next().await {
                            if let Ok(id) = msg.get_payload::<String>() {
                                if crate::route::is_valid_id(&id) {
                                    drop_id(id).await;
                                }
                            }
                        }
                        self.metrics.l2("subscribe", "lost");
                        self.log("l2: invalidation subscription lost; resubscribing");
                    }
                    Err(e) => self.failed("subscribe", &e),
                },
                Err(e) => self.failed("subscribe", &e),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs one command under the timeout; `None` on timeout or error, each counted.
    async fn bounded<T>(
        &self,
        op: &'static str,
        cmd: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, cmd).await;
        self.metrics.l2_latency(start.elapsed());
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.failed(op, &e);
                None
            }
            Err(_) => {
                self.metrics.l2(op, "timeout");
                self.log("l2: Redis answered too slowly; treated as a miss");
                None
            }
        }
    }

    fn failed(&self, op: &'static str, e: &redis::RedisError) {
        self.metrics.l2(op, "error");
        if self.should_log() {
            // The kind only: a URL with a password must never reach a log line.
            tracing::warn!(op, error = %describe(e), "l2: Redis error; carrying on without it");
        }
    }

    fn log(&self, message: &'static str) {
        if self.should_log() {
            tracing::warn!("{message}");
        }
    }

    fn should_log(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64
            && self
                .last_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
