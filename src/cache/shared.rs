//! The shared second level as the rest of the crate sees it: Redis when `TASKGATE_REDIS_URL`
//! is set and the build has the `redis` feature, and a level that holds nothing otherwise.
//! Callers never ask which: every method is a no-op (or a miss) when the level is off.

use std::{future::Future, sync::Arc, time::Duration};

use crate::{answer::Answer, resource::Key, secret::Secret, telemetry::Metrics};

#[derive(Clone, Default)]
pub struct SharedLevel {
    #[cfg(feature = "redis")]
    redis: Option<Arc<super::redis::Redis>>,
}

impl SharedLevel {
    /// A level that holds nothing.
    pub fn off() -> Self {
        Self::default()
    }

    /// The level for `url` (none: off), its keys under `namespace`. Makes no connection yet.
    pub fn new(
        url: Option<&Secret>,
        namespace: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let Some(url) = url else {
            return Ok(Self::off());
        };
        #[cfg(feature = "redis")]
        {
            let redis = super::redis::Redis::new(url.expose(), namespace, timeout, metrics)?;
            Ok(Self {
                redis: Some(Arc::new(redis)),
            })
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = (url, namespace, timeout, metrics);
            Err(
                "TASKGATE_REDIS_URL: this build has no Redis support (build with --features redis)"
                    .into(),
            )
        }
    }

    pub fn is_on(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.redis.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// The shared answer for `key`, if the level is on and holds one.
    pub async fn get(&self, key: Key) -> Option<Answer> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return redis.get(key).await;
        }
        let _ = key;
        None
    }

    /// Stores `answer` for the lifetime it has left, in the background.
    pub fn put(&self, key: Key, answer: Arc<Answer>) {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            let redis = Arc::clone(redis);
            tokio::spawn(async move { redis.put(key, &answer).await });
            return;
        }
        let _ = (key, answer);
    }

    /// Deletes `key` from the level and tells every replica to drop it.
    pub async fn invalidate(&self, key: Key) {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            redis.invalidate(key).await;
            return;
        }
        let _ = key;
    }

    /// Claims webhook event `id` for `ttl` across the fleet: `false` when another replica
    /// claimed it first (a retry Studio sent elsewhere). `true` when the level is off or Redis
    /// cannot answer: handling an event twice costs one refetch, losing one a stale answer.
    pub async fn claim_event(&self, id: &str, ttl: Duration) -> bool {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return redis.claim_event(id, ttl).await;
        }
        let _ = (id, ttl);
        true
    }

    /// Calls `drop_key` for each key another replica invalidates, for as long as the process
    /// runs (a background task; nothing when the level is off).
    pub fn listen<F, Fut>(&self, drop_key: F)
    where
        F: Fn(Key) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            tokio::spawn(Arc::clone(redis).listen(drop_key));
            return;
        }
        let _ = drop_key;
    }
}

/// The default namespace: a fingerprint of what makes answers differ between deployments —
/// the upstream URL, whether bodies are scrubbed, and the API key (its project). Two apps,
/// or staging and production, sharing one Redis get different namespaces; the replicas of one
/// deployment get the same. A key rotation changes it: during a rollout, replicas on the old
/// and the new key do not share answers (each half warms its own), and the old namespace's
/// entries expire with their TTLs. Set `TASKGATE_REDIS_NAMESPACE` to keep one across
/// rotations. 16 hex digits of SHA-256: the key cannot be recovered from it.
pub fn namespace(upstream_url: &str, redact: bool, api_key: &Secret) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        upstream_url.as_bytes(),
        &[u8::from(redact)],
        api_key.expose().as_bytes(),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_differ_by_upstream_redaction_and_key_only() {
        let key = Secret::new("k1");
        let base = namespace("https://livepeer.studio/api", true, &key);
        assert_eq!(base, namespace("https://livepeer.studio/api", true, &key));
        assert_eq!(base.len(), 16);
        assert!(!base.contains("k1"));
        for other in [
            namespace("https://staging.example/api", true, &key),
            namespace("https://livepeer.studio/api", false, &key),
            namespace("https://livepeer.studio/api", true, &Secret::new("k2")),
        ] {
            assert_ne!(base, other);
        }
    }
}
