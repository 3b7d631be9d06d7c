//! Abuse limits: a token bucket per client address, and the back-off shared by all requests
//! after the API answers 429.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sync::lock;

/// Most clients remembered at once: bounds the table's memory under a flood of addresses
/// (about 100 bytes each). Past it, the least recently seen are forgotten first.
const MAX_CLIENTS: u64 = 100_000;

/// Back-off after an upstream 429 that names no (valid) `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);
/// Longest back-off honoured, whatever the API says.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// `TASKGATE_RATE_LIMIT` requests per second per client, in bursts of `TASKGATE_RATE_BURST`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    clients: moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

impl RateLimiter {
    /// `None` when `rate` is 0 (off). A `burst` below 1 means the default, `2 × rate`.
    pub fn new(rate: f64, burst: f64) -> Option<Self> {
        if rate <= 0.0 {
            return None;
        }
        let burst = if burst >= 1.0 {
            burst
        } else {
            crate::config::default_burst(rate)
        };
        // A client idle long enough to refill its bucket is the same as a new one, so it
        // can be forgotten then.
        let refill = Duration::from_secs_f64((burst / rate).clamp(1.0, 3600.0));
        let clients = moka::sync::Cache::builder()
            .max_capacity(MAX_CLIENTS)
            .time_to_idle(refill)
            .build();
        Some(Self {
            rate,
            burst,
            clients,
        })
    }

    /// Takes one token for `client`, or says how long until one is available.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let bucket = self.clients.get_with(client, || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                last: now,
            }))
        });
        let mut b = lock(&bucket);
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    /// Clients currently remembered (for tests and metrics).
    #[cfg(test)]
    fn clients(&self) -> u64 {
        self.clients.run_pending_tasks();
        self.clients.entry_count()
    }
}

/// Fair shares of the upstream slots: at most `per_client` fetches of one client hold (or
/// wait for) an upstream slot at once, so one client's misses queue behind its own and never
/// in front of everyone else's.
pub struct ClientSlots {
    per_client: usize,
    clients: moka::sync::Cache<IpAddr, Arc<Semaphore>>,
}

impl ClientSlots {
    pub fn new(per_client: usize) -> Self {
        Self {
            per_client: per_client.max(1),
            // A client with no fetch in flight holds nothing worth remembering.
            clients: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }

    fn shares(&self, client: IpAddr) -> Arc<Semaphore> {
        self.clients
            .get_with(client, || Arc::new(Semaphore::new(self.per_client)))
    }

    /// One of `client`'s shares if one is free now (none is while others wait for one).
    pub fn try_acquire(&self, client: IpAddr) -> Option<OwnedSemaphorePermit> {
        self.shares(client).try_acquire_owned().ok()
    }

    /// Waits (at most `wait`) for one of `client`'s shares.
    pub async fn acquire(&self, client: IpAddr, wait: Duration) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(wait, self.shares(client).acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// A name, not a `&str`: a string is parsed into a header name on every lookup.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address a client is counted under: the peer, or with `TASKGATE_TRUST_FORWARDED` the
/// last `X-Forwarded-For` hop (the one the trusted proxy in front of taskgate added), as a
/// [`client_key`].
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trust_forwarded: bool) -> IpAddr {
    if trust_forwarded {
        let last_hop = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(parse_hop);
        if let Some(ip) = last_hop {
            return client_key(ip);
        }
    }
    client_key(peer.ip())
}

/// One `X-Forwarded-For` entry: `ip`, `ip:port` (IPv4) or `[v6]:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    // `[v6]` without a port.
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// What one client is: its IPv4 address, or the /64 of its IPv6 address (one host gets a
/// whole /64 and can rotate within it at will). IPv4-mapped IPv6 counts as the IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// While the API is telling taskgate to slow down, nobody goes upstream.
#[derive(Default)]
pub struct Backoff {
    until: Mutex<Option<Instant>>,
}

impl Backoff {
    /// Starts (or extends) the back-off from an upstream 429's `Retry-After`.
    pub fn start(&self, retry_after: Option<&HeaderValue>) {
        let delay = retry_after
            .and_then(retry_after_wait)
            .unwrap_or(DEFAULT_BACKOFF);
        let until = Instant::now() + delay;
        let mut current = lock(&self.until);
        if current.is_none_or(|c| c < until) {
            *current = Some(until);
        }
    }

    /// Time left, if a back-off is running.
    pub fn remaining(&self) -> Option<Duration> {
        let until = (*lock(&self.until))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// The wait an API's `Retry-After` asks for (delay-seconds or an HTTP-date), at most
/// [`MAX_BACKOFF`]: the back-off taskgate keeps, and what it tells the client that got the 429.
pub fn retry_after_wait(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    let digits = s.strip_prefix('+').unwrap_or(s);
    let wait = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Past u64: still a number of seconds, just a long one.
        Duration::from_secs(digits.parse().unwrap_or(u64::MAX))
    } else {
        httpdate::parse_http_date(s)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_BACKOFF))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let limiter = RateLimiter::new(1.0, 3.0).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(ip).is_ok());
        }
        let wait = limiter.check(ip).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another client has its own bucket.
        assert!(limiter.check("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_wait_and_the_refill_follow_the_rate() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // Half a token a second: an empty bucket has a token again in two seconds.
        let slow = RateLimiter::new(0.5, 1.0).unwrap();
        assert!(slow.check(ip).is_ok());
        let wait = slow.check(ip).unwrap_err();
        assert!(
            wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        // Twenty a second: an empty bucket has a token again within 50 ms.
        let fast = RateLimiter::new(20.0, 1.0).unwrap();
        assert!(fast.check(ip).is_ok());
        assert!(fast.check(ip).is_err());
        std::thread::sleep(Duration::from_millis(150));
        assert!(fast.check(ip).is_ok(), "refilled at 20 tokens a second");
    }

    #[test]
    fn zero_rate_is_off_and_burst_defaults_to_twice_the_rate() {
        assert!(RateLimiter::new(0.0, 10.0).is_none());
        let limiter = RateLimiter::new(2.0, 0.0).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!((0..10).filter(|_| limiter.check(ip).is_ok()).count(), 4);
    }

    #[test]
    fn the_client_table_is_bounded() {
        let limiter = RateLimiter::new(1.0, 1.0).unwrap();
        for i in 0..(MAX_CLIENTS + 5_000) {
            let ip = IpAddr::from((i as u32).to_be_bytes());
            let _ = limiter.check(ip);
        }
        assert!(limiter.clients() <= MAX_CLIENTS, "{}", limiter.clients());
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7, 198.51.100.2"),
        );
        assert_eq!(client_addr(peer, &h, false), peer.ip());
        assert_eq!(
            client_addr(peer, &h, true),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        h.append("x-forwarded-for", HeaderValue::from_static("not an ip"));
        assert_eq!(client_addr(peer, &h, true), peer.ip());
    }

    #[test]
    fn forwarded_for_hops_may_carry_ports() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        for (hop, want) in [
            ("198.51.100.2:4711", "198.51.100.2"),
            ("[2001:db8::1]:443", "2001:db8::"),
            ("[2001:db8::1]", "2001:db8::"),
            ("2001:db8::1", "2001:db8::"),
        ] {
            let mut h = HeaderMap::new();
            h.append("x-forwarded-for", HeaderValue::from_str(hop).unwrap());
            assert_eq!(
                client_addr(peer, &h, true),
                want.parse::<IpAddr>().unwrap(),
                "{hop}"
            );
        }
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        // Rotating within a /64 does not buy a fresh bucket.
        let limiter = RateLimiter::new(1.0, 1.0).unwrap();
        assert!(limiter.check(client_key(a)).is_ok());
        assert!(limiter
            .check(client_addr(SocketAddr::new(b, 1), &HeaderMap::new(), false))
            .is_err());
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(
            retry_after_wait(&HeaderValue::from_static("17")),
            Some(Duration::from_secs(17))
        );
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = retry_after_wait(&HeaderValue::from_str(&later).unwrap()).unwrap();
        assert!(
            d > Duration::from_secs(110) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(retry_after_wait(&HeaderValue::from_static("soon")), None);
    }

    #[test]
    fn a_later_429_extends_the_backoff_but_never_shortens_it() {
        let b = Backoff::default();
        b.start(Some(&HeaderValue::from_static("10")));
        b.start(Some(&HeaderValue::from_static("2")));
        let left = b.remaining().unwrap();
        assert!(left > Duration::from_secs(9), "not shortened: {left:?}");
        b.start(Some(&HeaderValue::from_static("30")));
        let left = b.remaining().unwrap();
        assert!(left > Duration::from_secs(29), "extended: {left:?}");
    }

    #[test]
    fn backoff_runs_for_retry_after_and_defaults_when_absent() {
        let b = Backoff::default();
        assert_eq!(b.remaining(), None);
        b.start(Some(&HeaderValue::from_static("3")));
        let left = b.remaining().unwrap();
        assert!(left > Duration::from_secs(2) && left <= Duration::from_secs(3));
        let d = Backoff::default();
        d.start(None);
        assert!(d.remaining().unwrap() <= DEFAULT_BACKOFF);
    }
}
