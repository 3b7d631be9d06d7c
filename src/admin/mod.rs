//! The admin listener: probes, metrics, purge and a status page, for operators only. Never
//! the task routes, and nothing here prints configuration or environment values.
//!
//! State-changing routes (purge) need `Authorization: Bearer <TASKGATE_ADMIN_TOKEN>` when an
//! admin token is configured (compared in constant time), else a loopback peer; anything else
//! gets 403 and changes nothing. Probes, metrics and the status page stay open.

mod status;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use http::{Method, Request, Response, StatusCode};

use crate::{
    answer::{
        respond::{self, full, Body, Head},
        Error,
    },
    ids,
    listener::Ends,
    proxy::Proxy,
    resource::{Key, Kind},
    telemetry::Snapshot,
};

/// Most connections the admin listener holds open at once, and from one client address:
/// probes, scrapes and purges need a few. Its own cap, apart from `TASKGATE_MAX_CONNECTIONS`
/// (the public listener's), so that the memory both may hold is bounded by the public cap
/// and this small one (docs/security.md, "What a connection costs"); wide enough that
/// filling it takes 16 client addresses.
pub const MAX_CONNECTIONS: usize = 256;
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 16;
/// How long an admin connection may wait for a request (head or keep-alive): probes and
/// scrapes send theirs at once, and a peer holding idle connections gives them back soon.
pub const WAIT_FOR_REQUEST: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Admin {
    proxy: Arc<Proxy>,
    ready: Arc<AtomicBool>,
    /// The cache's bound (`TASKGATE_CACHE_MAX_BYTES`), for the status page's fill.
    cache_max_bytes: u64,
    started: Instant,
}

impl Admin {
    pub fn new(proxy: Arc<Proxy>, ready: Arc<AtomicBool>, cache_max_bytes: u64) -> Self {
        Self {
            proxy,
            ready,
            cache_max_bytes,
            started: Instant::now(),
        }
    }

    /// The gauges `/metrics` and the status page read from their owners at request time.
    fn snapshot(&self) -> Snapshot {
        let (cache_entries, cache_bytes) = self.proxy.cache().usage();
        let (watch_ids, watch_streams) = self.proxy.watchers().counts();
        Snapshot {
            cache_entries,
            cache_bytes,
            watch_ids,
            watch_streams,
            webhook_age: self.proxy.webhook_age(),
        }
    }

    pub async fn handle<B>(self: Arc<Self>, req: Request<B>, ends: Ends) -> Response<Body> {
        let peer = ends.peer;
        if !host_allowed(req.headers(), ends.local.ip()) {
            return error(Error::ForeignHost);
        }
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") if self.ready.load(Ordering::SeqCst) => {
                text(StatusCode::OK, "ready\n")
            }
            (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            (&Method::GET, "/") => self.status_page(),
            (&Method::GET, "/metrics") => {
                let body = self.proxy.metrics().render(self.snapshot());
                let mut resp = Response::new(full(body));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            (&Method::DELETE, _) => {
                if !self.may_change_state(req.headers(), peer) {
                    tracing::warn!(%peer, "admin: purge refused (no valid admin token)");
                    return error(Error::AdminForbidden);
                }
                // `/cache/{kind}/{id}`
                let Some((kind, id)) = path
                    .strip_prefix("/cache/")
                    .and_then(|rest| rest.split_once('/'))
                    .and_then(|(kind, id)| Some((Kind::from_segment(kind)?, id)))
                else {
                    return error(Error::NoRoute);
                };
                let Some(key) = Key::new(kind, id) else {
                    return error(Error::BadId(kind));
                };
                self.proxy.invalidate(key).await;
                tracing::info!(kind = kind.as_str(), id, "purged");
                let mut resp = Response::new(full(""));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
            _ => error(Error::NoRoute),
        }
    }
}

impl Admin {
    /// Whether this request may change state: it carries the admin token in force, or none
    /// is configured and the peer is loopback.
    fn may_change_state(&self, headers: &http::HeaderMap, peer: SocketAddr) -> bool {
        let secrets = self.proxy.secrets().current();
        match &secrets.admin_token {
            Some(token) => headers
                .get_all(http::header::AUTHORIZATION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .any(|(_, given)| crate::secret::same(given.trim(), token.expose())),
            None => is_loopback(peer),
        }
    }

    /// `GET /`: the status page. No script may run and nothing may load (the page has none),
    /// and no cache keeps it.
    fn status_page(&self) -> Response<Body> {
        let readout = self.proxy.metrics().read(self.snapshot());
        let page = status::render(
            &readout,
            &status::Context {
                cache_max_bytes: self.cache_max_bytes,
                uptime: self.started.elapsed(),
                version: env!("CARGO_PKG_VERSION"),
                redis_configured: self.proxy.cache().shared().is_on(),
            },
        );
        let mut resp = Response::new(full(page));
        let headers = resp.headers_mut();
        for (name, value) in [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (http::header::CACHE_CONTROL, "no-store"),
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (http::header::REFERRER_POLICY, "no-referrer"),
        ] {
            headers.insert(name, http::HeaderValue::from_static(value));
        }
        resp
    }
}

/// A page in a browser can reach a loopback admin listener through a DNS name of the
/// attacker's that resolves to 127.0.0.1 (DNS rebinding); its requests then carry that name in
/// `Host`. So the admin listener answers only a `Host` that is a loopback name (`localhost`,
/// `*.localhost`) or address, or the address the client reached (`local`: a probe or
/// Prometheus scraping a pod by its IP), and requests without one (HTTP/1.0). Any other
/// address is refused too: SPEC allows no more, and nothing legitimate sends one.
fn host_allowed(headers: &http::HeaderMap, local: IpAddr) -> bool {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => return true,
        (Some(host), None) => host,
        // More than one, which could be read either way.
        (Some(_), Some(_)) => return false,
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    // `name[:port]`, `v4[:port]` or `[v6][:port]`, the port digits only.
    let port_ok = |rest: &str| {
        rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()))
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest.split_once(']').is_some_and(|(v6, rest)| {
                port_ok(rest)
                    && v6
                        .parse::<std::net::Ipv6Addr>()
                        .is_ok_and(|v6| own_or_loopback(IpAddr::V6(v6), local))
            })
        }
        None => match host.find(':') {
            Some(colon) if port_ok(&host[colon..]) => &host[..colon],
            Some(_) => return false,
            None => host,
        },
    };
    if let Ok(v4) = name.parse::<std::net::Ipv4Addr>() {
        return own_or_loopback(IpAddr::V4(v4), local);
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether `addr`, named in `Host`, is a loopback address or `local` (an IPv4 address mapped
/// into IPv6 counts as itself, on either side).
fn own_or_loopback(addr: IpAddr, local: IpAddr) -> bool {
    let addr = addr.to_canonical();
    addr.is_loopback() || addr == local.to_canonical()
}

fn is_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

fn error(error: Error) -> Response<Body> {
    respond::build(
        Head::error(error),
        full(error.body()),
        &ids::new_request_id(),
    )
}

/// `taskgate --healthcheck`: GET `/healthz` on the admin listener at `addr` and report
/// whether it answered 200 within `timeout`. For container health checks in images without a
/// shell or an HTTP client. Plain blocking std I/O: it runs before any runtime exists.
pub fn probe(addr: std::net::SocketAddr, timeout: std::time::Duration) -> Result<(), String> {
    use std::io::{Read, Write};

    let addr = crate::listener::local_address(addr);
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to the admin listener {addr}: {e}"))?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .and_then(|()| {
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        })
        .map_err(|e| format!("admin listener {addr}: {e}"))?;
    // The status line is all that matters; it fits in the first read of a small buffer.
    let mut head = [0u8; 64];
    let n = tcp
        .read(&mut head)
        .map_err(|e| format!("admin listener {addr}: no answer ({e})"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let line = line.lines().next().unwrap_or_default();
    match line.split(' ').nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("admin listener {addr}: /healthz answered {line:?}")),
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    fn allowed(host: &str, local: &str) -> bool {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, host.parse().unwrap());
        host_allowed(&headers, local.parse().unwrap())
    }

    #[test]
    fn a_host_is_a_loopback_name_or_address_or_the_address_the_client_reached() {
        let pod = "10.1.2.3";
        for host in [
            "localhost",
            "app.localhost:9090",
            "127.0.0.1:9090",
            "[::1]",
            "[::ffff:127.0.0.1]:9090",
            "10.1.2.3",
            "10.1.2.3:9090",
            "[::ffff:10.1.2.3]:9090",
        ] {
            assert!(allowed(host, pod), "{host}");
        }
        for host in [
            "10.1.2.4:9090",
            "0.0.0.0",
            "[2001:db8::1]",
            "[::1",
            "taskgate-a:9090",
            "localhost.evil.example",
            "127.0.0.1.nip.example",
            "[::1]evil.example",
            "127.0.0.1:1.evil.example",
            "localhost:evil",
            "localhost:80:80",
            "[::1]:80]",
        ] {
            assert!(!allowed(host, pod), "{host}");
        }
        // Two `Host` headers are refused, even two good ones; `localhost:` (an empty port) is
        // what RFC 3986 allows.
        let mut two = http::HeaderMap::new();
        two.append(http::header::HOST, "localhost".parse().unwrap());
        two.append(http::header::HOST, "localhost".parse().unwrap());
        assert!(!host_allowed(&two, pod.parse().unwrap()));
        assert!(allowed("localhost:", pod));
        // The listener's own address as IPv4 mapped into IPv6 (a dual-stack socket).
        assert!(allowed("10.1.2.3:9090", "::ffff:10.1.2.3"));
        assert!(allowed("[fd00::7]:9090", "fd00::7"));
        // No `Host` at all (HTTP/1.0) is a client that is not a browser.
        assert!(host_allowed(&http::HeaderMap::new(), pod.parse().unwrap()));
    }

    #[test]
    fn only_loopback_peers_count_as_local() {
        for local in [
            "127.0.0.1:1",
            "127.8.9.10:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.5:1",
            "192.168.1.2:1",
            "[fd00::1]:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert!(!is_loopback(remote.parse().unwrap()), "{remote}");
        }
    }
}
