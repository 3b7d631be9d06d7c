//! Browser-facing safety: CORS, the per-client rate limit, the shared back-off after an
//! upstream 429, and the cap on upstream fetches.

mod common;

use std::time::Duration;

use common::{taskgate, HttpClient, MockUpstream, Reply};
use http::StatusCode;
use taskgate::config::CorsOrigins;

const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

fn allow_app(c: &mut taskgate::config::Config) {
    c.cors_origins = CorsOrigins::List(vec![APP.into()]);
}

// ---- CORS ------------------------------------------------------------------------------------

#[tokio::test]
async fn an_allowed_origin_gets_its_own_origin_back_with_vary() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, allow_app).await;
    let got = HttpClient::default()
        .send(tg.public_addr(), "GET", "/task/t1", &[("origin", APP)])
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("access-control-allow-origin"), Some(APP));
    assert_eq!(got.header("vary"), Some("Origin"));
    assert!(got
        .header("access-control-expose-headers")
        .unwrap()
        .contains("x-cache"));
    assert!(
        mock.seen()[0].headers.get("origin").is_none(),
        "Origin is never forwarded"
    );
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_headers() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, allow_app).await;
    let got = HttpClient::default()
        .send(tg.public_addr(), "GET", "/task/t1", &[("origin", EVIL)])
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        got.headers
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "{:?}",
        got.headers
    );
    assert_eq!(got.header("vary"), Some("Origin"));
}

#[tokio::test]
async fn without_cors_configured_no_cors_header_is_sent() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let got = HttpClient::default()
        .send(tg.public_addr(), "GET", "/task/t1", &[("origin", APP)])
        .await;
    assert!(got
        .headers
        .keys()
        .all(|k| !k.as_str().starts_with("access-control-")));
    assert!(got.headers.get("vary").is_none());
}

#[tokio::test]
async fn a_cached_answer_never_carries_another_origins_headers() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let other = "http://localhost:3000";
    let tg = taskgate(&mock, |c| {
        c.cors_origins = CorsOrigins::List(vec![APP.into(), other.into()])
    })
    .await;
    let c = HttpClient::default();
    let first = c
        .send(tg.public_addr(), "GET", "/task/t1", &[("origin", APP)])
        .await;
    assert_eq!(first.header("access-control-allow-origin"), Some(APP));
    let second = c
        .send(tg.public_addr(), "GET", "/task/t1", &[("origin", other)])
        .await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.header("access-control-allow-origin"), Some(other));
    let third = c
        .send(tg.public_addr(), "GET", "/task/t1", &[("origin", EVIL)])
        .await;
    assert_eq!(third.header("x-cache"), Some("HIT"));
    assert_eq!(third.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn a_wildcard_allows_any_origin() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "running"));
    let tg = taskgate(&mock, |c| c.cors_origins = CorsOrigins::Any).await;
    let got = HttpClient::default()
        .send(tg.public_addr(), "GET", "/task/t1", &[("origin", EVIL)])
        .await;
    assert_eq!(got.header("access-control-allow-origin"), Some(EVIL));
}

#[tokio::test]
async fn a_preflight_with_the_sdks_headers_is_accepted() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, allow_app).await;
    let got = HttpClient::default()
        .send(
            tg.public_addr(),
            "OPTIONS",
            "/api/task/t1",
            &[
                ("origin", APP),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ],
        )
        .await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    assert_eq!(got.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        got.header("access-control-allow-methods"),
        Some("GET, HEAD, OPTIONS")
    );
    assert_eq!(
        got.header("access-control-allow-headers"),
        Some("authorization")
    );
    assert_eq!(got.header("access-control-max-age"), Some("600"));
    assert!(got.header("vary").unwrap().contains("Origin"));
    assert_eq!(mock.calls(), 0, "a preflight never goes upstream");
}

#[tokio::test]
async fn a_preflight_from_a_disallowed_origin_or_for_another_method_is_403() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, allow_app).await;
    let c = HttpClient::default();
    for (origin, method) in [(EVIL, "GET"), (APP, "DELETE"), (APP, "POST")] {
        let got = c
            .send(
                tg.public_addr(),
                "OPTIONS",
                "/task/t1",
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                ],
            )
            .await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{origin} {method}");
        assert!(got
            .headers
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")));
        assert!(got.json()["errors"][0].is_string());
    }
    // Without CORS configured every preflight is refused; a plain OPTIONS still gets Allow.
    let tg = taskgate(&mock, |_| {}).await;
    let got = c
        .send(
            tg.public_addr(),
            "OPTIONS",
            "/task/t1",
            &[("origin", APP), ("access-control-request-method", "GET")],
        )
        .await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    let plain = c.send(tg.public_addr(), "OPTIONS", "/task/t1", &[]).await;
    assert_eq!(plain.status, StatusCode::NO_CONTENT);
    assert_eq!(plain.header("allow"), Some("GET, HEAD, OPTIONS"));
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn errors_carry_cors_headers_so_pages_can_read_them() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, allow_app).await;
    let c = HttpClient::default();
    for path in ["/task/missing", "/task/%2e%2e"] {
        let got = c
            .send(tg.public_addr(), "GET", path, &[("origin", APP)])
            .await;
        assert!(got.status.is_client_error());
        assert_eq!(
            got.header("access-control-allow-origin"),
            Some(APP),
            "{path}"
        );
    }
}

// ---- per-client rate limit ------------------------------------------------------------------

#[tokio::test]
async fn a_client_over_its_budget_gets_429_and_no_upstream_call() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "running"));
    let tg = taskgate(&mock, |c| {
        c.rate_limit = 1.0;
        c.rate_burst = 3.0;
    })
    .await;
    let c = HttpClient::default();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(c.get(tg.public_addr(), "/task/t1").await.status.as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(mock.calls(), 3);
    let limited = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.json()["errors"][0], "rate limit exceeded");
    // The bucket refills at the configured rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.get(tg.public_addr(), "/task/t1").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn forwarded_clients_are_limited_separately_only_when_trusted() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let c = HttpClient::default();
    let send = |tg: std::net::SocketAddr, ip: &'static str| {
        let c = c.clone();
        async move {
            c.send(tg, "GET", "/task/t1", &[("x-forwarded-for", ip)])
                .await
                .status
                .as_u16()
        }
    };
    let trusted = taskgate(&mock, |c| {
        c.rate_limit = 0.5;
        c.rate_burst = 1.0;
        c.trust_forwarded = true;
    })
    .await;
    let a = trusted.public_addr();
    assert_eq!(
        (send(a, "198.51.100.1").await, send(a, "198.51.100.2").await),
        (200, 200)
    );
    assert_eq!(send(a, "198.51.100.1").await, 429);

    let untrusted = taskgate(&mock, |c| {
        c.rate_limit = 0.5;
        c.rate_burst = 1.0;
    })
    .await;
    let a = untrusted.public_addr();
    assert_eq!(
        (send(a, "198.51.100.1").await, send(a, "198.51.100.2").await),
        (200, 429)
    );
}

// ---- upstream protection --------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_429_backs_everyone_off_but_cached_answers_are_still_served() {
    let mock = MockUpstream::start().await;
    mock.set("done", Reply::task("done", "completed"));
    mock.set(
        "busy",
        Reply::json(429, r#"{"errors":["slow down"]}"#).header("retry-after", "2"),
    );
    mock.set("other", Reply::task("other", "running"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.public_addr(), "/task/done").await.status,
        StatusCode::OK
    );
    let limited = c.get(tg.public_addr(), "/task/busy").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), Some("2"));
    let calls = mock.calls();
    // During the back-off: no upstream call for any id, a 429 at once, hits still served.
    let other = c.get(tg.public_addr(), "/task/other").await;
    assert_eq!(other.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(other.header("retry-after").is_some());
    assert_eq!(
        c.get(tg.public_addr(), "/task/done")
            .await
            .header("x-cache"),
        Some("HIT")
    );
    assert_eq!(mock.calls(), calls);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        c.get(tg.public_addr(), "/task/other").await.status,
        StatusCode::OK
    );
    assert_eq!(mock.calls(), calls + 1);
}

#[tokio::test]
async fn a_request_that_gets_no_upstream_slot_in_time_gets_503() {
    // One slot. `a` holds it for 0.9 s, `x` queues next and holds it for another 0.9 s, so
    // `b`, queued behind them, cannot get it within its 1 s and is refused.
    let mock = MockUpstream::start().await;
    mock.set(
        "a",
        Reply::task("a", "running").delay(Duration::from_millis(900)),
    );
    mock.set(
        "x",
        Reply::task("x", "running").delay(Duration::from_millis(900)),
    );
    mock.set("b", Reply::task("b", "running"));
    let tg = taskgate(&mock, |c| {
        c.upstream_concurrency = 1;
        c.upstream_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = tg.public_addr();
    let get = |id: &'static str| {
        tokio::spawn(async move {
            HttpClient::default()
                .get(addr, &format!("/task/{id}"))
                .await
        })
    };
    let a = get("a");
    while mock.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let x = get("x");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = get("b").await.unwrap();
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE, "{}", b.text());
    assert_eq!(b.header("x-cache"), Some("PASS"));
    assert_eq!(a.await.unwrap().status, StatusCode::OK);
    assert_eq!(x.await.unwrap().status, StatusCode::OK);
    assert!(
        mock.seen().iter().all(|s| !s.uri.ends_with("/b")),
        "b never went upstream"
    );
}

// ---- the per-client budget for the API ----------------------------------------------------

#[tokio::test]
async fn one_client_cannot_spend_the_api_quota_with_distinct_ids() {
    let mock = MockUpstream::start().await;
    mock.set("done", Reply::task("done", "completed"));
    let tg = taskgate(&mock, |c| {
        c.miss_rate = 1.0;
        c.miss_burst = 5.0;
    })
    .await;
    let c = HttpClient::default();
    // A cached answer first: hits never spend the budget.
    c.get(tg.public_addr(), "/task/done").await;
    for _ in 0..20 {
        assert_eq!(
            c.get(tg.public_addr(), "/task/done").await.status,
            StatusCode::OK
        );
    }
    let calls_before = mock.calls();
    let mut refused = 0;
    for i in 0..30 {
        let got = c.get(tg.public_addr(), &format!("/task/flood-{i}")).await;
        if got.status == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
            assert!(got.header("retry-after").is_some());
            assert_eq!(
                got.json()["errors"][0],
                "too many requests for uncached resources"
            );
        }
    }
    // The burst left 4 tokens after the first miss; the rest were refused without a call.
    assert!(refused >= 25, "{refused} refused");
    assert!(
        mock.calls() - calls_before <= 5,
        "{} calls",
        mock.calls() - calls_before
    );
    // Another client (through a trusted proxy's X-Forwarded-For) has its own budget... not
    // here: trust is off, so the header changes nothing.
    let spoofed = c
        .send(
            tg.public_addr(),
            "GET",
            "/task/other",
            &[("x-forwarded-for", "198.51.100.9")],
        )
        .await;
    assert_eq!(spoofed.status, StatusCode::TOO_MANY_REQUESTS);
    // Hits are still served.
    assert_eq!(
        c.get(tg.public_addr(), "/task/done").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn behind_a_trusted_ingress_each_browser_has_its_own_budget() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |c| {
        c.miss_rate = 1.0;
        c.miss_burst = 1.0;
        c.trust_forwarded = true;
    })
    .await;
    let c = HttpClient::default();
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let a = c
        .send(tg.public_addr(), "GET", "/task/a1", &from("203.0.113.1"))
        .await;
    let b = c
        .send(tg.public_addr(), "GET", "/task/b1", &from("203.0.113.2"))
        .await;
    assert_ne!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(b.status, StatusCode::TOO_MANY_REQUESTS);
    let a2 = c
        .send(tg.public_addr(), "GET", "/task/a2", &from("203.0.113.1"))
        .await;
    assert_eq!(a2.status, StatusCode::TOO_MANY_REQUESTS);
}

/// taskgate with `slots` upstream slots (a quarter per client), clients told apart by
/// `X-Forwarded-For`, and no miss budget.
async fn with_client_shares(mock: &MockUpstream, slots: usize) -> taskgate::Running {
    taskgate(mock, |c| {
        c.upstream_concurrency = slots;
        c.miss_rate = 0.0;
        c.trust_forwarded = true;
    })
    .await
}

/// Sends `GET path` as `client` (an `X-Forwarded-For` address), in a task of its own.
fn get_as(
    public: std::net::SocketAddr,
    client: &'static str,
    path: String,
) -> tokio::task::JoinHandle<common::Got> {
    tokio::spawn(async move {
        HttpClient::default()
            .send(public, "GET", &path, &[("x-forwarded-for", client)])
            .await
    })
}

fn calls_for(mock: &MockUpstream, id: &str) -> usize {
    let path = format!("/task/{id}");
    mock.seen()
        .iter()
        .filter(|s| s.uri.ends_with(&path))
        .count()
}

#[tokio::test]
async fn one_clients_slow_misses_queue_behind_its_own_share_of_upstream_slots() {
    let mock = MockUpstream::start().await;
    for i in 0..8 {
        mock.set(
            &format!("slow-{i}"),
            Reply::task("s", "running").delay(Duration::from_millis(600)),
        );
    }
    mock.set("mine", Reply::task("mine", "running"));
    // 8 slots, 2 per client: the flood from 203.0.113.1 holds at most 2.
    let tg = with_client_shares(&mock, 8).await;
    let public = tg.public_addr();
    let flood: Vec<_> = (0..8)
        .map(|i| get_as(public, "203.0.113.1", format!("/task/slow-{i}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mine = get_as(public, "203.0.113.2", "/task/mine".into())
        .await
        .unwrap();
    assert_eq!(mine.status, StatusCode::OK);
    for f in flood {
        assert_eq!(f.await.unwrap().status, StatusCode::OK);
    }
    // The upstream saw the other client's request right after the flood's first two: the
    // flood's other six waited for its own share, not in front of everyone else.
    let order: Vec<String> = mock.seen().into_iter().map(|s| s.uri).collect();
    let at = order
        .iter()
        .position(|u| u.ends_with("/task/mine"))
        .unwrap();
    assert_eq!(at, 2, "{order:?}");
}

#[tokio::test]
async fn a_client_waiting_for_its_own_share_does_not_hold_back_an_id_others_want() {
    let mock = MockUpstream::start().await;
    mock.set(
        "slow",
        Reply::task("slow", "running").delay(Duration::from_secs(2)),
    );
    mock.set("popular", Reply::task("popular", "completed"));
    // 4 slots, 1 per client.
    let tg = with_client_shares(&mock, 4).await;
    let public = tg.public_addr();
    // 203.0.113.1 fills its share with a slow fetch, then asks for the popular id.
    let slow = get_as(public, "203.0.113.1", "/task/slow".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = get_as(public, "203.0.113.1", "/task/popular".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another client's request for it is not held behind that queue: it leads its own fetch.
    let started = std::time::Instant::now();
    let other = get_as(public, "203.0.113.2", "/task/popular".into())
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.header("x-cache"), Some("MISS"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}, not after the other client's 2 s fetch",
        started.elapsed()
    );
    // The queued request joined the other client's fetch when it started: answered too,
    // long before its own share came free.
    let queued = queued.await.unwrap();
    assert_eq!(queued.status, StatusCode::OK);
    assert_eq!(queued.header("x-cache"), Some("MISS"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!slow.is_finished());
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(calls_for(&mock, "popular"), 1);
}

#[tokio::test]
async fn requests_waiting_for_their_share_still_join_one_fetch() {
    let mock = MockUpstream::start().await;
    mock.set(
        "slow",
        Reply::task("slow", "running").delay(Duration::from_millis(600)),
    );
    mock.set(
        "busy",
        Reply::task("busy", "running").delay(Duration::from_millis(200)),
    );
    let tg = with_client_shares(&mock, 4).await;
    let public = tg.public_addr();
    let slow = get_as(public, "203.0.113.1", "/task/slow".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Five requests for one running task while the client's share is taken: when it frees,
    // the first leads and the other four join it (a running task is never stored, so each
    // would otherwise cost a call of its own).
    let burst: Vec<_> = (0..5)
        .map(|_| get_as(public, "203.0.113.1", "/task/busy".into()))
        .collect();
    for got in burst {
        let got = got.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("x-cache"), Some("PASS"));
    }
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(calls_for(&mock, "busy"), 1);
}

#[tokio::test]
async fn origin_patterns_allow_any_subdomain_with_their_scheme_and_port_only() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |cfg| {
        cfg.cors_origins = CorsOrigins::List(vec![
            "https://*.example.com".into(),
            "http://*.dev.example.net:3000".into(),
        ]);
    })
    .await;
    let c = HttpClient::default();
    for allowed in [
        "https://app.example.com",
        "https://pr-42.preview.example.com",
        "http://web.dev.example.net:3000",
    ] {
        let got = c
            .send(tg.public_addr(), "GET", "/task/t1", &[("origin", allowed)])
            .await;
        assert_eq!(
            got.header("access-control-allow-origin"),
            Some(allowed),
            "{allowed}"
        );
        let pre = c
            .send(
                tg.public_addr(),
                "OPTIONS",
                "/task/t1",
                &[
                    ("origin", allowed),
                    ("access-control-request-method", "GET"),
                ],
            )
            .await;
        assert_eq!(pre.status, StatusCode::NO_CONTENT, "{allowed}");
    }
    for refused in [
        "https://example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.test",
        "https://evilexample.com",
        "http://web.dev.example.net",
    ] {
        let got = c
            .send(tg.public_addr(), "GET", "/task/t1", &[("origin", refused)])
            .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("access-control-allow-origin"), None, "{refused}");
        let pre = c
            .send(
                tg.public_addr(),
                "OPTIONS",
                "/task/t1",
                &[
                    ("origin", refused),
                    ("access-control-request-method", "GET"),
                ],
            )
            .await;
        assert_eq!(pre.status, StatusCode::FORBIDDEN, "{refused}");
    }
}
