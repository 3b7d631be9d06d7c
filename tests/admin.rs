//! The admin listener: probes, metrics and purge, separate from the public listener.

mod common;

use std::time::Duration;

use common::{taskgate, HttpClient, MockUpstream, Reply, SseReader};
use http::StatusCode;

/// The value of one sample line (`name{labels} value`) in Prometheus text, or 0 if absent.
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `taskgate_upstream_calls_avoided_total` for one reason.
fn avoided(metrics: &str, reason: &str) -> f64 {
    sample(
        metrics,
        &format!("taskgate_upstream_calls_avoided_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn health_and_readiness_answer_200_while_serving() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.admin_addr(), "/healthz").await.status,
        StatusCode::OK
    );
    assert_eq!(
        c.get(tg.admin_addr(), "/readyz").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn task_routes_are_not_served_on_admin_and_admin_routes_not_on_public() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for p in ["/task/t1", "/api/task/t1"] {
        assert_eq!(
            c.get(tg.admin_addr(), p).await.status,
            StatusCode::NOT_FOUND,
            "{p}"
        );
    }
    for p in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            c.get(tg.public_addr(), p).await.status,
            StatusCode::NOT_FOUND,
            "{p}"
        );
    }
    let purge = c
        .send(tg.public_addr(), "DELETE", "/cache/task/t1", &[])
        .await;
    assert_eq!(purge.status, StatusCode::NOT_FOUND);
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn purge_sends_the_next_request_upstream() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(
        c.get(tg.public_addr(), "/task/t1").await.header("x-cache"),
        Some("HIT")
    );
    let purge = c
        .send(tg.admin_addr(), "DELETE", "/cache/task/t1", &[])
        .await;
    assert_eq!(purge.status, StatusCode::NO_CONTENT);
    assert_eq!(
        c.get(tg.public_addr(), "/task/t1").await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(mock.calls(), 2);
    // Purging an id that is not cached is fine; a malformed id is refused.
    let absent = c
        .send(tg.admin_addr(), "DELETE", "/cache/task/nothing-here", &[])
        .await;
    assert_eq!(absent.status, StatusCode::NO_CONTENT);
    let bad = c
        .send(tg.admin_addr(), "DELETE", "/cache/task/%2e%2e", &[])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metrics_move_as_requests_are_served() {
    let mock = MockUpstream::start().await;
    mock.set("done", Reply::task("done", "completed"));
    mock.set(
        "busy",
        Reply::task("busy", "running").delay(Duration::from_millis(200)),
    );
    mock.set("boom", Reply::json(500, "{}"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), "/task/done").await; // miss
    c.get(tg.public_addr(), "/task/done").await; // hit
    let (a, b) = tokio::join!(
        c.get(tg.public_addr(), "/task/busy"),
        c.get(tg.public_addr(), "/task/busy")
    );
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK)); // a pass and a coalesced wait
    c.get(tg.public_addr(), "/task/boom").await; // an upstream error
    c.get(tg.public_addr(), "/task/..").await; // a bad id

    let got = c.get(tg.admin_addr(), "/metrics").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = got.text();
    let requests = |labels: &str| sample(&m, &format!("taskgate_requests_total{{{labels}}}"));
    assert_eq!(
        requests(r#"route="task",status="200",cache="MISS",kind="task",reason="none""#),
        1.0,
        "{m}"
    );
    assert_eq!(
        requests(r#"route="task",status="200",cache="HIT",kind="task",reason="none""#),
        1.0
    );
    assert_eq!(
        requests(r#"route="task",status="200",cache="PASS",kind="task",reason="none""#),
        2.0
    );
    assert_eq!(
        requests(r#"route="task",status="502",cache="PASS",kind="task",reason="upstream_error""#),
        1.0
    );
    assert_eq!(
        requests(r#"route="bad_id",status="400",cache="none",kind="task",reason="bad_id""#),
        1.0
    );
    assert_eq!(sample(&m, "taskgate_coalesced_waits_total"), 1.0);
    assert_eq!(
        sample(
            &m,
            r#"taskgate_upstream_requests_total{status_class="2xx",error="none"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            r#"taskgate_upstream_requests_total{status_class="5xx",error="none"}"#
        ),
        1.0
    );
    assert_eq!(sample(&m, "taskgate_upstream_duration_seconds_count"), 3.0);
    assert_eq!(
        sample(
            &m,
            r#"taskgate_request_duration_seconds_count{cache="HIT"}"#
        ),
        1.0
    );
    // Sub-millisecond buckets exist, so a hit's latency is resolved.
    assert!(
        m.contains(r#"taskgate_request_duration_seconds_bucket{cache="HIT",le="0.0001"}"#),
        "{m}"
    );
    assert_eq!(sample(&m, "taskgate_cache_entries"), 1.0);
    assert!(sample(&m, "taskgate_cache_bytes") > 0.0);
    assert_eq!(sample(&m, "taskgate_upstream_in_flight"), 0.0);
    assert!(
        !m.contains("done") && !m.contains("busy"),
        "task ids are never labels"
    );
    assert!(!m.contains(common::KEY));
}

#[tokio::test]
async fn upstream_error_kinds_are_counted() {
    let mock = MockUpstream::start().await;
    mock.set(
        "slow",
        Reply::task("slow", "running").delay(Duration::from_secs(2)),
    );
    let tg = taskgate(&mock, |c| c.upstream_timeout = Duration::from_millis(200)).await;
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.public_addr(), "/task/slow").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    let m = c.get(tg.admin_addr(), "/metrics").await.text();
    assert_eq!(
        sample(
            &m,
            r#"taskgate_upstream_requests_total{status_class="none",error="timeout"}"#
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn readiness_turns_503_at_shutdown_while_requests_are_still_served() {
    let mock = MockUpstream::start().await;
    mock.set(
        "slow",
        Reply::task("slow", "running").delay(Duration::from_millis(600)),
    );
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |c| c.shutdown_grace = Duration::from_millis(800)).await;
    let (public, admin) = (tg.public_addr(), tg.admin_addr());
    let c = HttpClient::default();
    let slow = tokio::spawn({
        let c = c.clone();
        async move { c.get(public, "/task/slow").await }
    });
    while mock.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tg.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        c.get(admin, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(c.get(admin, "/healthz").await.status, StatusCode::OK);
    // During the grace period the public listener still takes new requests.
    assert_eq!(
        HttpClient::default().get(public, "/task/t1").await.status,
        StatusCode::OK
    );
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    tg.wait().await;
    assert!(tokio::net::TcpStream::connect(public).await.is_err());
}

#[tokio::test]
async fn the_admin_listener_answers_only_loopback_hosts_and_its_own_address() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), "/task/t1").await;
    // Addresses other than loopback or the listener's own are refused too (SPEC: the
    // admin listener answers only a loopback name or address or its own listen address).
    for host in [
        "evil.example",
        "evil.example:9090",
        "127.0.0.1.nip.example",
        "10.1.2.3:9090",
        "0.0.0.0",
        "[2001:db8::1]:80",
        "[::1",
    ] {
        let got = c
            .send(
                tg.admin_addr(),
                "DELETE",
                "/cache/task/t1",
                &[("host", host)],
            )
            .await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{host}");
        let got = c
            .send(tg.admin_addr(), "GET", "/metrics", &[("host", host)])
            .await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{host}");
    }
    // Nothing was purged: the next read is still a hit.
    assert_eq!(
        c.get(tg.public_addr(), "/task/t1").await.header("x-cache"),
        Some("HIT")
    );
    for host in [
        "localhost:9090",
        "127.0.0.1",
        "[::1]:9090",
        "127.8.9.10",
        "app.localhost",
        "LOCALHOST.:9090",
    ] {
        let got = c
            .send(tg.admin_addr(), "GET", "/healthz", &[("host", host)])
            .await;
        assert_eq!(got.status, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn a_purge_during_a_fetch_keeps_that_fetch_out_of_the_cache() {
    let mock = MockUpstream::start().await;
    mock.set(
        "slow",
        Reply::task("slow", "completed").delay(Duration::from_millis(400)),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let public = tg.public_addr();
    let fetch = tokio::spawn(async move { HttpClient::default().get(public, "/task/slow").await });
    // The purge lands while the fetch is in flight.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let purge = c
        .send(tg.admin_addr(), "DELETE", "/cache/task/slow", &[])
        .await;
    assert_eq!(purge.status, StatusCode::NO_CONTENT);
    let first = fetch.await.unwrap();
    assert_eq!(
        first.status,
        StatusCode::OK,
        "its waiters still get the answer"
    );
    assert_eq!(first.header("x-cache"), Some("PASS"));
    // Stored nowhere: the next read goes upstream again.
    let second = c.get(public, "/task/slow").await;
    assert_eq!(second.header("x-cache"), Some("MISS"));
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn each_request_without_its_own_upstream_call_is_counted_once_by_what_saved_it() {
    let mock = MockUpstream::start().await;
    mock.set("done", Reply::task("done", "completed"));
    mock.set(
        "slow",
        Reply::task("slow", "running").delay(Duration::from_millis(300)),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let public = tg.public_addr();
    let miss = c.get(public, "/task/done").await; // its own call: not counted
    let etag = miss.header("etag").unwrap().to_owned();
    c.get(public, "/task/done").await; // hit
    c.get(public, "/task/done").await; // hit
    let nm = c
        .send(public, "GET", "/task/done", &[("if-none-match", &etag)])
        .await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
    let (a, b) = tokio::join!(c.get(public, "/task/slow"), c.get(public, "/task/slow"));
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK)); // one call, one waiter
    c.get(public, "/task/..").await; // refused
    let m = c.get(tg.admin_addr(), "/metrics").await.text();
    assert_eq!(avoided(&m, "hit"), 2.0, "{m}");
    assert_eq!(avoided(&m, "not_modified"), 1.0);
    assert_eq!(avoided(&m, "coalesced"), 1.0);
    assert_eq!(avoided(&m, "refused"), 1.0);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn the_quota_report_counts_stale_backoff_and_shared_watches_but_not_a_full_watch_table() {
    let mock = MockUpstream::start().await;
    mock.set("kept", Reply::task("kept", "completed"));
    mock.set(
        "slowdown",
        Reply::json(429, r#"{"errors":["slow down"]}"#).header("retry-after", "30"),
    );
    mock.set("w1", Reply::task("w1", "running"));
    mock.set("w2", Reply::task("w2", "running"));
    let tg = taskgate(&mock, |c| {
        c.ttl_completed = Duration::from_millis(200);
        c.watch_max = 1;
    })
    .await;
    let c = HttpClient::default();
    let public = tg.public_addr();

    // Stale after a failed refresh: that request made its call, so it is not counted.
    assert_eq!(
        c.get(public, "/task/kept").await.header("x-cache"),
        Some("MISS")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    mock.set("kept", Reply::json(503, r#"{"errors":["down"]}"#));
    let refreshed = c.get(public, "/task/kept").await;
    assert_eq!(refreshed.header("x-cache"), Some("STALE"));
    // Watches: the first starts the poller (API calls of its own), the second shares it.
    let first = SseReader::open(public, "/task/w1/events", &[]).await;
    let second = SseReader::open(public, "/task/w1/events", &[]).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::OK, StatusCode::OK)
    );
    // A full watch table refuses a new id: not the client's doing, so not counted as
    // refused, and no call was avoided by it either.
    let full = SseReader::open(public, "/task/w2/events", &[]).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    // The API says slow down: that 429 made its call. During the back-off, the kept answer
    // is served stale and another read is held back, neither with a call.
    let limited = c.get(public, "/task/slowdown").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let calls = mock.calls();
    let stale = c.get(public, "/task/kept").await;
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    let held = c.get(public, "/task/slowdown").await;
    assert_eq!(held.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(mock.calls(), calls, "neither called the API");

    let m = c.get(tg.admin_addr(), "/metrics").await.text();
    assert_eq!(avoided(&m, "stale"), 1.0, "{m}");
    assert_eq!(avoided(&m, "watch_shared"), 1.0, "{m}");
    assert_eq!(avoided(&m, "backoff"), 1.0, "{m}");
    assert_eq!(avoided(&m, "refused"), 0.0, "{m}");
    for reason in ["hit", "coalesced", "not_modified"] {
        assert_eq!(avoided(&m, reason), 0.0, "{reason}: {m}");
    }
    drop((first, second));
}

#[tokio::test]
async fn purge_needs_the_admin_token_when_one_is_set_and_changes_nothing_without_it() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |cfg| {
        cfg.admin_token = Some(taskgate::config::Secret::new("adm-token-7f3e"));
    })
    .await;
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.public_addr(), "/task/t1").await.status,
        StatusCode::OK
    );
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "Bearer adm-token-7f3e-and-more")],
        vec![("authorization", "Basic adm-token-7f3e")],
    ] {
        let got = c
            .send(tg.admin_addr(), "DELETE", "/cache/task/t1", &headers)
            .await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(got.json()["errors"][0], "admin token required");
        // Nothing was purged: still a hit, no new upstream call.
        let got = c.get(tg.public_addr(), "/task/t1").await;
        assert_eq!(got.header("x-cache"), Some("HIT"));
        assert_eq!(mock.calls(), 1);
    }
    // Probes, metrics and the status page stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/"] {
        assert_eq!(
            c.get(tg.admin_addr(), path).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let got = c
        .send(
            tg.admin_addr(),
            "DELETE",
            "/cache/task/t1",
            &[("authorization", "Bearer adm-token-7f3e")],
        )
        .await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    let got = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(got.header("x-cache"), Some("MISS"));
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn without_an_admin_token_a_loopback_peer_may_purge() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), "/task/t1").await;
    let got = c
        .send(tg.admin_addr(), "DELETE", "/cache/task/t1", &[])
        .await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
}

/// A connection to the admin port from `ip`, holding an unfinished request head.
async fn admin_conn(tg: &taskgate::Running, ip: [u8; 4]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(ip), 0).into())
        .unwrap();
    let mut s = socket.connect(tg.admin_addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    s
}

/// Whether `GET /healthz` from `ip` is answered within `wait`.
async fn healthz_from(tg: &taskgate::Running, ip: [u8; 4], wait: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = admin_conn(tg, ip).await;
    s.write_all(b"Host: localhost\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200")
    )
}

/// The admin listener has its own small cap (256 connections, 16 per client address), not the
/// public `TASKGATE_MAX_CONNECTIONS`: the memory both listeners may hold stays what
/// docs/security.md counts, and no peer on the admin port can open thousands. It gives a
/// connection 5 s for its request, so one that holds a slot idle soon gives it back.
#[tokio::test]
async fn the_admin_listener_has_its_own_small_connection_caps() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |c| {
        c.max_connections = 1000;
        c.max_connections_per_client = 1000;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(admin_conn(&tg, [127, 0, 1, 1]).await);
    }
    // A 17th from a client that holds 16 is closed at once.
    let mut extra = admin_conn(&tg, [127, 0, 1, 1]).await;
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut extra, &mut buf),
    )
    .await
    .expect("closed at once, not left waiting");
    assert!(matches!(got, Ok(0) | Err(_)), "the 17th was served");
    for client in 2..=16u8 {
        for _ in 0..16 {
            held.push(admin_conn(&tg, [127, 0, 1, client]).await);
        }
    }
    // 256 in all: a 17th client waits in the backlog...
    assert!(!healthz_from(&tg, [127, 0, 1, 17], Duration::from_millis(500)).await);
    // ... and is served once the held connections' 5 s for a request have run out (the public
    // listener would give them 10 s); the public port never waited.
    assert!(healthz_from(&tg, [127, 0, 1, 18], Duration::from_secs(8)).await);
    let mut buf = [0u8; 1];
    let closed = tokio::io::AsyncReadExt::read(&mut held[0], &mut buf).await;
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "a held connection is closed"
    );
    let public = HttpClient::default().get(tg.public_addr(), "/task/x").await;
    assert_ne!(public.status, StatusCode::SERVICE_UNAVAILABLE);
}
