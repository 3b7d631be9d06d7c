//! The contract of SPEC's "Public routes", "The upstream request", "Answers" and coalescing,
//! tested end to end: a real taskgate on 127.0.0.1:0 in front of a mock Studio API.

mod common;

use std::time::Duration;

use common::{raw, task_body, taskgate, HttpClient, MockUpstream, Reply, KEY};
use http::StatusCode;

const ID: &str = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69";

fn path(id: &str) -> String {
    format!("/task/{id}")
}

// ---- routes ------------------------------------------------------------------------------

#[tokio::test]
async fn task_is_served_under_both_prefixes() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "running"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for p in [format!("/task/{ID}"), format!("/api/task/{ID}")] {
        let got = c.get(tg.public_addr(), &p).await;
        assert_eq!(got.status, StatusCode::OK, "{p}");
        assert_eq!(got.json()["status"]["phase"], "running");
    }
    assert!(mock
        .seen()
        .iter()
        .all(|s| s.uri == format!("/api/task/{ID}")));
}

#[tokio::test]
async fn head_answers_headers_without_a_body() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let got = HttpClient::default()
        .send(tg.public_addr(), "HEAD", &path(ID), &[])
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.is_empty());
    assert_eq!(
        got.header("content-length"),
        Some(task_body(ID, "completed").len().to_string().as_str())
    );
    assert_eq!(got.header("x-cache"), Some("MISS"));
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |_| {}).await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let got = HttpClient::default()
            .send(tg.public_addr(), method, &path(ID), &[])
            .await;
        assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(got.header("allow"), Some("GET, HEAD, OPTIONS"));
        assert_eq!(got.json()["errors"][0], "method not allowed");
    }
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn a_get_carrying_a_body_is_400() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |_| {}).await;
    let out = raw(
        tg.public_addr(),
        format!("GET /task/{ID} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains(r#"{"errors":["#), "{out}");
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn malformed_ids_are_400_and_never_reach_upstream() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let long = "a".repeat(65);
    for p in [
        "/task/%2e%2e",
        "/task/..",
        "/task/a%2Fb",
        "/api/task/a%252Fb",
        "/task/a;b",
        "/task/a.json",
        "/task/%41",
        &format!("/task/{long}"),
    ] {
        let got = c.get(tg.public_addr(), p).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{p}");
        assert_eq!(got.json()["errors"][0], "invalid task id", "{p}");
        assert_eq!(got.header("content-type"), Some("application/json"));
    }
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn unknown_paths_are_404_in_the_api_error_shape() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |_| {}).await;
    for p in [
        "/",
        "/tasks/abc",
        "/task",
        "/task/abc/more",
        "/metrics",
        "/healthz",
        "/webhooks/livepeer",
    ] {
        let got = HttpClient::default().get(tg.public_addr(), p).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{p}");
        assert_eq!(got.json(), serde_json::json!({"errors": ["not found"]}));
    }
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn the_query_string_is_ignored_and_never_forwarded() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "running"));
    let tg = taskgate(&mock, |_| {}).await;
    let got = HttpClient::default()
        .get(
            tg.public_addr(),
            &format!("/task/{ID}?projectId=p&x=%2e%2e"),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(mock.seen()[0].uri, format!("/api/task/{ID}"));
}

// ---- the upstream request -----------------------------------------------------------------

#[tokio::test]
async fn the_upstream_request_is_built_from_nothing() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "running"));
    let tg = taskgate(&mock, |_| {}).await;
    let got = HttpClient::default()
        .send(
            tg.public_addr(),
            "GET",
            &path(ID),
            &[
                ("authorization", "Bearer client-token"),
                ("origin", "https://app.example"),
                ("cookie", "session=browser"),
                ("if-none-match", "\"whatever\""),
                ("accept-encoding", "gzip"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-request-id", "req-42"),
            ],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = &mock.seen()[0];
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, format!("/api/task/{ID}"));
    let h = &seen.headers;
    assert_eq!(h["authorization"], format!("Bearer {KEY}").as_str());
    assert_eq!(h["accept"], "application/json");
    assert_eq!(
        h["user-agent"],
        concat!("taskgate/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(h["x-request-id"], "req-42");
    assert!(h.contains_key("traceparent"));
    let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "accept",
            "authorization",
            "host",
            "traceparent",
            "user-agent",
            "x-request-id"
        ]
    );
}

#[tokio::test]
async fn the_clients_trace_is_continued_upstream() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "running"));
    let tg = taskgate(&mock, |_| {}).await;
    let client_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    HttpClient::default()
        .send(
            tg.public_addr(),
            "GET",
            &path(ID),
            &[("traceparent", client_parent)],
        )
        .await;
    HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    let seen = mock.seen();
    let child = seen[0].headers["traceparent"].to_str().unwrap();
    assert!(
        child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{child}"
    );
    assert_ne!(child, client_parent, "a child span id, not the client's");
    let fresh = seen[1].headers["traceparent"].to_str().unwrap();
    assert!(
        !fresh.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{fresh}"
    );
    assert_eq!(fresh.len(), 55);
}

// ---- answers -------------------------------------------------------------------------------

#[tokio::test]
async fn completed_tasks_are_cached() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let first = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.header("cache-control"), Some("public, max-age=86400"));
    assert_eq!(first.header("age"), None);
    let second = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("etag"), first.header("etag"));
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn failed_and_cancelled_tasks_are_cached_for_ttl_failed() {
    let mock = MockUpstream::start().await;
    mock.set("f1", Reply::task("f1", "failed"));
    mock.set("c1", Reply::task("c1", "cancelled"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for id in ["f1", "c1"] {
        let first = c.get(tg.public_addr(), &path(id)).await;
        assert_eq!(first.header("x-cache"), Some("MISS"), "{id}");
        assert_eq!(
            first.header("cache-control"),
            Some("public, max-age=30"),
            "{id}"
        );
        assert_eq!(
            c.get(tg.public_addr(), &path(id)).await.header("x-cache"),
            Some("HIT"),
            "{id}"
        );
    }
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn unfinished_tasks_are_never_cached() {
    let mock = MockUpstream::start().await;
    for phase in ["pending", "waiting", "running"] {
        mock.set(phase, Reply::task(phase, phase));
    }
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for phase in ["pending", "waiting", "running"] {
        for _ in 0..2 {
            let got = c.get(tg.public_addr(), &path(phase)).await;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.header("x-cache"), Some("PASS"), "{phase}");
            assert_eq!(got.header("cache-control"), Some("no-store"), "{phase}");
            assert_eq!(got.json()["status"]["phase"], phase);
        }
    }
    assert_eq!(mock.calls(), 6);
}

#[tokio::test]
async fn the_pending_micro_cache_serves_hits_but_stays_no_store() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "running"));
    let tg = taskgate(&mock, |c| c.ttl_pending = Duration::from_millis(300)).await;
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("MISS")
    );
    let hit = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.header("cache-control"), Some("no-store"));
    assert_eq!(mock.calls(), 1);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn a_cached_answer_expires_after_its_ttl() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "failed"));
    let tg = taskgate(&mock, |c| c.ttl_failed = Duration::from_millis(300)).await;
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("HIT")
    );
    // A manual retry upstream: the task is waiting again, and is seen once the TTL runs out.
    mock.set(ID, Reply::task(ID, "waiting"));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let got = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.header("x-cache"), Some("PASS"));
    assert_eq!(got.json()["status"]["phase"], "waiting");
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn a_200_without_a_known_phase_is_passed_through() {
    let mock = MockUpstream::start().await;
    mock.set(
        "html",
        Reply::json(200, "<html>maintenance</html>").header("content-type", "text/html"),
    );
    mock.set(
        "odd",
        Reply::json(200, r#"{"id":"odd","status":{"phase":"exploded"}}"#),
    );
    // Redaction off: a body that is not JSON is relayed as sent (with it on it is a 502,
    // tests/redaction.rs).
    let tg = taskgate(&mock, |c| c.redact = false).await;
    let c = HttpClient::default();
    for id in ["html", "odd", "html"] {
        let got = c.get(tg.public_addr(), &path(id)).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("x-cache"), Some("PASS"));
    }
    assert_eq!(
        c.get(tg.public_addr(), "/task/odd").await.json()["status"]["phase"],
        "exploded"
    );
    assert_eq!(mock.calls(), 4);
    // Redaction on (the default): JSON with no known phase is still passed through.
    let tg = taskgate(&mock, |_| {}).await;
    for (id, status) in [("odd", StatusCode::OK), ("html", StatusCode::BAD_GATEWAY)] {
        let got = c.get(tg.public_addr(), &path(id)).await;
        assert_eq!(got.status, status, "{id}");
        assert_eq!(got.header("x-cache"), Some("PASS"), "{id}");
    }
    assert_eq!(mock.calls(), 6);
}

#[tokio::test]
async fn upstream_404_is_negatively_cached() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let first = c.get(tg.public_addr(), "/task/missing").await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert_eq!(first.json(), serde_json::json!({"errors": ["not found"]}));
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.header("cache-control"), Some("public, max-age=5"));
    assert_eq!(first.header("etag"), None);
    let second = c.get(tg.public_addr(), "/task/missing").await;
    assert_eq!(second.status, StatusCode::NOT_FOUND);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn ttl_not_found_zero_turns_the_negative_cache_off() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |c| c.ttl_not_found = Duration::ZERO).await;
    let c = HttpClient::default();
    for _ in 0..2 {
        let got = c.get(tg.public_addr(), "/task/missing").await;
        assert_eq!(got.status, StatusCode::NOT_FOUND);
        assert_eq!(got.header("x-cache"), Some("PASS"));
        assert_eq!(got.header("cache-control"), Some("no-store"));
    }
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn an_upstream_401_becomes_502_and_its_body_never_reaches_the_client() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::json(401, format!(r#"{{"errors":["no token {KEY} found"]}}"#)),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for _ in 0..2 {
        let got = c.get(tg.public_addr(), &path(ID)).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        assert_eq!(got.header("x-cache"), Some("PASS"));
        assert!(!got.text().contains(KEY), "{}", got.text());
        assert!(!format!("{:?}", got.headers).contains(KEY));
        assert!(got.json()["errors"][0].is_string());
    }
    assert_eq!(mock.calls(), 2, "a 401 is not cached");
}

#[tokio::test]
async fn an_upstream_403_gets_a_generic_body() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::json(
            403,
            r#"{"errors":["user someone@example.com has not been verified"]}"#,
        ),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let got = HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert!(!got.text().contains("someone@example.com"));
    assert_eq!(got.header("x-cache"), Some("PASS"));
}

#[tokio::test]
async fn an_upstream_429_keeps_retry_after() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::json(429, r#"{"errors":["Too many requests"]}"#).header("retry-after", "17"),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let got = HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("17"));
    assert_eq!(got.header("x-cache"), Some("PASS"));
    assert_eq!(got.header("cache-control"), Some("no-store"));
}

/// `Retry-After` is the one upstream header a client sees: it is read as the back-off reads it
/// and written afresh in seconds (at most the back-off's 600), never relayed as sent, so an API
/// that echoes the key there (or anything else) cannot reach the client.
#[tokio::test]
async fn an_upstream_retry_after_is_rewritten_and_anything_but_seconds_or_a_date_dropped() {
    let mock = MockUpstream::start().await;
    let c = HttpClient::default();
    for (i, (sent, relayed)) in [
        (KEY, None),
        ("<script>alert(1)</script>", None),
        ("17 seconds", None),
        (" 0017 ", Some("17")),
        ("+5", Some("5")),
        ("18446744073709551615", Some("600")),
        ("18446744073709551616000", Some("600")),
        // A date already past: the shortest wait.
        ("Sunday, 06-Nov-94 08:49:37 GMT", Some("1")),
    ]
    .into_iter()
    .enumerate()
    {
        // A taskgate each, outside the back-off the previous 429 started.
        let tg = taskgate(&mock, |_| {}).await;
        let id = format!("ra-{i}");
        mock.set(
            &id,
            Reply::json(429, r#"{"errors":["Too many requests"]}"#).header("retry-after", sent),
        );
        let got = c.get(tg.public_addr(), &format!("/task/{id}")).await;
        assert_eq!(mock.calls(), i + 1, "{sent}");
        assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS, "{sent}");
        // Dropped: as when the API sends none (tests/faults.rs).
        assert_eq!(got.header("retry-after"), relayed, "{sent}");
        assert!(
            got.headers
                .values()
                .all(|v| !v.as_bytes().starts_with(b"sk_")),
            "{sent}"
        );
    }
}

#[tokio::test]
async fn other_upstream_4xx_are_relayed_with_their_body() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::json(
            400,
            r#"{"errors":["projectId as query param not supported"]}"#,
        ),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let got = HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        got.json()["errors"][0],
        "projectId as query param not supported"
    );
    assert_eq!(got.header("x-cache"), Some("PASS"));
}

#[tokio::test]
async fn upstream_5xx_becomes_502_and_is_not_cached() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::json(500, r#"{"errors":["Internal server error: Error"]}"#),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for _ in 0..2 {
        let got = c.get(tg.public_addr(), &path(ID)).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        assert_eq!(got.json()["errors"][0], "upstream error");
    }
    assert_eq!(mock.calls(), 2);
    // Recovery: the next good answer is served and cached.
    mock.set(ID, Reply::task(ID, "completed"));
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_refused_upstream_connection_is_502() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = common::config(&format!("http://127.0.0.1:{port}/api"));
    cfg.connect_timeout = Duration::from_secs(1);
    let tg = taskgate::start(cfg).await.unwrap();
    let got = HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.json()["errors"][0], "upstream unavailable");
    assert_eq!(got.header("x-cache"), Some("PASS"));
}

#[tokio::test]
async fn no_complete_answer_within_the_timeout_is_504() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::task(ID, "completed").delay(Duration::from_secs(2)),
    );
    let tg = taskgate(&mock, |c| c.upstream_timeout = Duration::from_millis(300)).await;
    let got = HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(got.header("x-cache"), Some("PASS"));
    assert!(
        tg.proxy().cache().get(&common::task_key(ID)).is_none(),
        "a timeout is not cached"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_502() {
    let mock = MockUpstream::start().await;
    let big = format!(
        r#"{{"status":{{"phase":"completed","updatedAt":1}},"pad":"{}"}}"#,
        "x".repeat(4096)
    );
    mock.set(ID, Reply::json(200, big));
    let tg = taskgate(&mock, |c| c.max_body = 1024).await;
    let got = HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.json()["errors"][0], "upstream answer too large");
    assert!(tg.proxy().cache().get(&common::task_key(ID)).is_none());
}

#[tokio::test]
async fn upstream_cookies_vary_and_server_headers_are_not_relayed() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::task(ID, "completed")
            .header("connection", "keep-alive")
            .header("server", "nginx"),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for _ in 0..2 {
        let got = c.get(tg.public_addr(), &path(ID)).await;
        for name in ["set-cookie", "vary", "x-powered-by", "server"] {
            assert!(got.headers.get(name).is_none(), "{name} relayed");
        }
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_ne!(got.header("etag"), Some("W/\"1a-upstream\""));
    }
}

#[tokio::test]
async fn etag_and_if_none_match_answer_304() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "completed"));
    mock.set("run", Reply::task("run", "running"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for id in [ID, "run"] {
        let first = c.get(tg.public_addr(), &path(id)).await;
        let etag = first.header("etag").unwrap().to_owned();
        assert!(
            etag.starts_with('"') && !etag.starts_with("W/"),
            "strong: {etag}"
        );
        let again = c
            .send(
                tg.public_addr(),
                "GET",
                &path(id),
                &[("if-none-match", &etag)],
            )
            .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{id}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let other = c
            .send(
                tg.public_addr(),
                "GET",
                &path(id),
                &[("if-none-match", "\"other\"")],
            )
            .await;
        assert_eq!(other.status, StatusCode::OK);
    }
    // The completed task was fetched once; the running one each time.
    assert_eq!(
        mock.seen().iter().filter(|s| s.uri.ends_with(ID)).count(),
        1
    );
    assert_eq!(
        mock.seen()
            .iter()
            .filter(|s| s.uri.ends_with("/run"))
            .count(),
        3
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let echoed = c
        .send(
            tg.public_addr(),
            "GET",
            &path(ID),
            &[("x-request-id", "abc-123")],
        )
        .await;
    assert_eq!(echoed.header("x-request-id"), Some("abc-123"));
    let a = c.get(tg.public_addr(), &path(ID)).await;
    let b = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(a.header("x-request-id").unwrap().len(), 32);
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
    let bad = c.get(tg.public_addr(), "/task/..").await;
    assert!(bad.header("x-request-id").is_some());
}

// ---- coalescing ----------------------------------------------------------------------------

async fn concurrent_gets(addr: std::net::SocketAddr, id: &str, n: usize) -> Vec<common::Got> {
    let c = HttpClient::default();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let c = c.clone();
            let p = path(id);
            tokio::spawn(async move { c.get(addr, &p).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn fifty_concurrent_requests_for_a_completed_task_cost_one_upstream_call() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::task(ID, "completed").delay(Duration::from_millis(300)),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let got = concurrent_gets(tg.public_addr(), ID, 50).await;
    assert!(got
        .iter()
        .all(|g| g.status == StatusCode::OK && g.json()["status"]["phase"] == "completed"));
    assert!(got.iter().all(|g| g.header("x-cache") == Some("MISS")));
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn fifty_concurrent_requests_for_a_running_task_cost_one_upstream_call() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::task(ID, "running").delay(Duration::from_millis(300)),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let got = concurrent_gets(tg.public_addr(), ID, 50).await;
    assert!(got
        .iter()
        .all(|g| g.status == StatusCode::OK && g.header("x-cache") == Some("PASS")));
    assert_eq!(mock.calls(), 1);
    // The shared answer was not cached: the next request asks again.
    HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn concurrent_requests_share_an_error_too() {
    let mock = MockUpstream::start().await;
    mock.set(
        ID,
        Reply::json(503, "down").delay(Duration::from_millis(300)),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let got = concurrent_gets(tg.public_addr(), ID, 20).await;
    assert!(got.iter().all(|g| g.status == StatusCode::BAD_GATEWAY));
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn the_fetch_survives_the_first_client_hanging_up() {
    for phase in ["completed", "running"] {
        let mock = MockUpstream::start().await;
        mock.set(ID, Reply::task(ID, phase).delay(Duration::from_millis(400)));
        let tg = taskgate(&mock, |_| {}).await;
        let addr = tg.public_addr();
        // The first client starts the fetch and disconnects long before it completes.
        let request = format!("GET /task/{ID} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            raw(addr, request.as_bytes(), Duration::from_millis(50)).await,
            ""
        );
        let got = concurrent_gets(addr, ID, 49).await;
        assert!(got.iter().all(|g| g.status == StatusCode::OK), "{phase}");
        assert_eq!(
            mock.calls(),
            1,
            "{phase}: the others joined the first fetch"
        );
    }
}

// ---- cache bound ---------------------------------------------------------------------------

#[tokio::test]
async fn the_cache_stays_within_its_byte_bound() {
    let mock = MockUpstream::start().await;
    for i in 0..200 {
        let id = format!("t{i}");
        mock.set(&id, Reply::task(&id, "completed"));
    }
    let max = 16 * 1024;
    let tg = taskgate(&mock, |c| {
        c.cache_max_bytes = max;
        c.miss_rate = 0.0; // thousands of distinct ids from one test client
    })
    .await;
    let c = HttpClient::default();
    for i in 0..200 {
        assert_eq!(
            c.get(tg.public_addr(), &format!("/task/t{i}")).await.status,
            StatusCode::OK
        );
    }
    let (entries, bytes) = tg.proxy().cache().usage();
    assert!(bytes <= max, "{bytes} > {max}");
    assert!(entries > 0 && entries < 200, "{entries}");
}

// ---- workers -------------------------------------------------------------------------------

/// One keep-alive connection to taskgate.
async fn connect(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn pass(send: &mut hyper::client::conn::http1::SendRequest<String>) -> String {
    use http_body_util::BodyExt;
    let req = http::Request::get(path(ID))
        .header("host", "t")
        .body(String::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cache = resp.headers()["x-cache"].to_str().unwrap().to_owned();
    resp.into_body().collect().await.unwrap();
    cache
}

/// Client connections are dealt to the workers (one per core) in turn, and each worker keeps
/// its own upstream connections: two clients taking turns use one upstream connection each
/// (one in all on a single core), rather than sharing one that hands every exchange to
/// another thread.
#[tokio::test]
async fn each_worker_keeps_its_own_upstream_connections() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "running"));
    let tg = taskgate(&mock, |_| {}).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut clients = [
        connect(tg.public_addr()).await,
        connect(tg.public_addr()).await,
    ];
    for _ in 0..3 {
        for client in &mut clients {
            assert_eq!(pass(client).await, "PASS");
        }
    }
    assert_eq!(mock.calls(), 6);
    assert_eq!(mock.connections(), cores.min(2));
}

/// A hit (and a refusal) is answered as the request is handed over, before the returned
/// future is polled: the request is gone by then (here: its body is dropped), so hyper can
/// reuse its read buffer for the next one. A miss keeps the request for the future, which
/// goes upstream when polled.
#[tokio::test]
async fn a_hit_is_answered_and_its_request_dropped_before_its_future_is_polled() {
    use std::{
        convert::Infallible,
        pin::Pin,
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
        task::{Context, Poll},
    };

    /// An empty body that tells when it is dropped.
    struct Watched(Arc<AtomicBool>);
    impl Drop for Watched {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    impl http_body::Body for Watched {
        type Data = bytes::Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
            Poll::Ready(None)
        }
        fn is_end_stream(&self) -> bool {
            true
        }
    }

    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let peer = "127.0.0.1:40000".parse().unwrap();
    let handle = |p: &str| {
        let dropped = Arc::new(AtomicBool::new(false));
        let req = http::Request::get(p)
            .header("host", "t")
            .body(Watched(Arc::clone(&dropped)))
            .unwrap();
        let handled = Arc::clone(tg.proxy()).handle(req, peer);
        (handled, dropped.load(Ordering::SeqCst))
    };
    // The miss: the request is kept, and nothing has gone upstream until the future runs.
    let (miss, dropped) = handle(&path(ID));
    assert!(!dropped);
    assert_eq!(mock.calls(), 0);
    assert_eq!(miss.await.headers()["x-cache"], "MISS");
    assert_eq!(mock.calls(), 1);
    // The hit and a refusal: answered, and the request dropped, before any poll.
    let (hit, dropped) = handle(&path(ID));
    assert!(dropped, "a hit's request outlived the call");
    assert_eq!(hit.await.headers()["x-cache"], "HIT");
    let (bad, dropped) = handle("/task/a.b");
    assert!(dropped, "a refusal's request outlived the call");
    assert_eq!(bad.await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(mock.calls(), 1);
}

/// `Proxy::handle` called on a thread that is not a worker (an embedding, the criterion
/// bench) goes upstream through the client kept for such callers.
#[tokio::test]
async fn a_request_handled_off_the_workers_still_reaches_the_api() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "running"));
    let tg = taskgate(&mock, |_| {}).await;
    let req = http::Request::get(path(ID))
        .header("host", "t")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let peer = "127.0.0.1:40000".parse().unwrap();
    let resp = std::sync::Arc::clone(tg.proxy()).handle(req, peer).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-cache"], "PASS");
    assert_eq!(mock.calls(), 1);
}
