//! The shared second level: finished answers (and 404s) in Redis, for many replicas
//! (docs/replicas.md).
//!
//! Guarantees:
//! - Redis never fails a request and never stalls one past `TASKGATE_REDIS_TIMEOUT`: a slow,
//!   down, full or confused Redis is a miss, counted in `taskgate_l2_*` and logged at most
//!   once per [`LOG_EVERY`].
//! - Answers are stored under `taskgate:v2:{namespace}:{kind}:{id}` with the lifetime they
//!   have left, in [`Answer::encode`]'s versioned encoding; a value that does not decode is a
//!   miss. The namespace keeps tenants sharing one Redis apart (see [`namespace`]).
//! - Purges and webhooks delete the key and publish `{kind}:{id}` on
//!   `taskgate:v2:{namespace}:invalidate`; every replica of the same namespace listens there
//!   (resubscribing after any loss) and drops the key from memory.
//! - A webhook event id first seen by a replica is claimed with `SET NX` under
//!   `taskgate:v2:{namespace}:webhook-seen:{id}` for the dedupe window, so Studio's retry of it
//!   is a duplicate on every replica.
//!
//! The connection is made lazily and re-made by itself (redis' `ConnectionManager`), so
//! taskgate starts and serves while Redis is down.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use redis::{aio::ConnectionManager, AsyncCommands, SetExpiry, SetOptions};

use crate::{
    answer::Answer,
    clock::unix_ms_now,
    resource::{Key, Kind},
    telemetry::Metrics,
};

/// Errors are logged at most this often (the counters see every one).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// An error's kind only: a Redis URL holds the password, and must never reach a log line.
fn describe(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

/// `{kind}:{id}` as published.
fn parse_invalidation(payload: &str) -> Option<Key> {
    let (kind, id) = payload.split_once(':')?;
    Key::new(Kind::from_segment(kind)?, id)
}

pub struct Redis {
    /// `taskgate:v2:{namespace}:`, the prefix of every key and of the channel.
    prefix: String,
    channel: String,
    client: redis::Client,
    con: ConnectionManager,
    timeout: Duration,
    metrics: Arc<Metrics>,
    last_logged_ms: AtomicU64,
}

impl Redis {
    /// Builds the client; no connection is made until the first command.
    pub fn new(
        url: &str,
        namespace: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        // On error, only the error's kind: the message may quote the URL and its password.
        let client = redis::Client::open(url)
            .map_err(|e| format!("TASKGATE_REDIS_URL: {}", describe(&e)))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            // Retried in the background; a request never waits for a reconnect.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let con = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("TASKGATE_REDIS_URL: {}", describe(&e)))?;
        let prefix = format!("taskgate:v2:{namespace}:");
        Ok(Self {
            channel: format!("{prefix}invalidate"),
            prefix,
            client,
            con,
            timeout,
            metrics,
            last_logged_ms: AtomicU64::new(0),
        })
    }

    /// A shared answer for `key`, or `None` (absent, unreadable, or Redis unavailable).
    pub async fn get(&self, key: Key) -> Option<Answer> {
        let mut con = self.con.clone();
        let got: Option<Option<Vec<u8>>> = self
            .bounded("get", async move { con.get(self.redis_key(key)).await })
            .await;
        match got {
            Some(Some(bytes)) => match Answer::decode(key.kind(), &bytes) {
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
    pub async fn put(&self, key: Key, answer: &Answer) {
        let left = answer.remaining().as_millis() as u64;
        if left == 0 {
            return;
        }
        let value = answer.encode();
        let mut con = self.con.clone();
        let options = SetOptions::default().with_expiration(SetExpiry::PX(left));
        let redis_key = self.redis_key(key);
        let stored: Option<()> = self
            .bounded("set", async move {
                con.set_options(redis_key, value, options).await
            })
            .await;
        if stored.is_some() {
            self.metrics.l2("set", "ok");
        }
    }

    /// Deletes the key and tells every replica to drop it.
    pub async fn invalidate(&self, key: Key) {
        let mut con = self.con.clone();
        let payload = format!("{}:{}", key.kind(), key.id());
        let (redis_key, channel) = (self.redis_key(key), self.channel.clone());
        let done: Option<()> = self
            .bounded("invalidate", async move {
                let _: () = redis::pipe()
                    .del(redis_key)
                    .ignore()
                    .publish(channel, payload)
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

    /// `SET {prefix}webhook-seen:{id} 1 NX PX ttl`: whether this replica is the first to
    /// claim the event. Fails open (see [`super::SharedLevel::claim_event`]).
    pub async fn claim_event(&self, id: &str, ttl: Duration) -> bool {
        let mut con = self.con.clone();
        let key = format!("{}webhook-seen:{id}", self.prefix);
        let ms = ttl.as_millis() as u64;
        let set: Option<Option<String>> = self
            .bounded("claim", async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut con)
                    .await
            })
            .await;
        match set {
            Some(Some(_)) => {
                self.metrics.l2("claim", "ok");
                true
            }
            Some(None) => {
                self.metrics.l2("claim", "duplicate");
                false
            }
            None => true,
        }
    }

    /// Listens on the invalidation channel for as long as the process runs, calling `drop_key`
    /// for each key published, and subscribing again after any loss of the connection.
    pub async fn listen<F, Fut>(self: Arc<Self>, drop_key: F)
    where
        F: Fn(Key) -> Fut,
        Fut: Future<Output = ()>,
    {
        use futures_util::StreamExt as _;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&self.channel).await {
                    Ok(()) => {
                        tracing::info!(channel = %self.channel, "l2: subscribed");
                        delay = Duration::from_millis(100);
                        let mut messages = pubsub.into_on_message();
                        while let Some(msg) = messages.next().await {
                            let payload = msg.get_payload::<String>().ok();
                            if let Some(key) = payload.as_deref().and_then(parse_invalidation) {
                                drop_key(key).await;
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

    fn redis_key(&self, key: Key) -> String {
        format!("{}{}:{}", self.prefix, key.kind(), key.id())
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
        let now = unix_ms_now();
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64
            && self
                .last_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_name_a_kind_and_an_id() {
        let task = Key::new(Kind::Task, "abc").unwrap();
        assert_eq!(parse_invalidation("task:abc"), Some(task));
        for bad in ["", "abc", "task:", "nope:abc", "task:a/b", "a b"] {
            assert_eq!(parse_invalidation(bad), None, "{bad:?}");
        }
    }
}
