//! Stale answers: a finished task whose lifetime ran out is still served, marked `STALE`, when
//! its refresh fails; a successful refresh or a 404 replaces it; 404s and unfinished work are
//! never served stale.

mod common;

use std::time::Duration;

use common::{task_body, taskgate, HttpClient, MockUpstream, Reply};
use http::StatusCode;

const TTL: Duration = Duration::from_millis(300);

/// A completed task cached with a short TTL, then expired.
async fn expired(mock: &MockUpstream, tg: &taskgate::Running, c: &HttpClient) -> String {
    mock.set("t1", Reply::task("t1", "completed"));
    let first = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    first.text()
}

#[tokio::test]
async fn each_way_the_api_can_fail_gives_the_kept_answer_as_stale() {
    let failures: [(&str, Reply); 4] = [
        ("503", Reply::json(503, r#"{"errors":["down"]}"#)),
        ("reset", Reply::reset()),
        (
            "slow",
            Reply::task("t1", "completed").delay(Duration::from_secs(3)),
        ),
        (
            "429",
            Reply::json(429, r#"{"errors":["slow down"]}"#).header("retry-after", "1"),
        ),
    ];
    for (name, failure) in failures {
        let mock = MockUpstream::start().await;
        let tg = taskgate(&mock, |c| {
            c.ttl_completed = TTL;
            c.upstream_timeout = Duration::from_millis(500);
        })
        .await;
        let c = HttpClient::default();
        let body = expired(&mock, &tg, &c).await;
        mock.set("t1", failure);
        let got = c.get(tg.public_addr(), "/task/t1").await;
        assert_eq!(got.status, StatusCode::OK, "{name}");
        assert_eq!(got.header("x-cache"), Some("STALE"), "{name}");
        assert_eq!(got.text(), body, "{name}: the kept body");
        assert_eq!(
            got.header("cache-control"),
            Some("max-age=0, must-revalidate"),
            "{name}"
        );
        assert!(got.header("age").is_some(), "{name}");
        let m = c.get(tg.admin_addr(), "/metrics").await.text();
        assert!(
            m.lines()
                .any(|l| l.starts_with("taskgate_requests_total") && l.contains(r#"cache="STALE""#)),
            "{name}: STALE counted"
        );
        // The API back: a refresh replaces it.
        mock.set(
            "t1",
            Reply::json(
                200,
                task_body("t1", "completed").replace("completed\"", "completed\",\"v\":2"),
            ),
        );
        if name == "429" {
            // The shared back-off runs out first (stale answers are served meanwhile).
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let back = c.get(tg.public_addr(), "/task/t1").await;
        assert_eq!(back.header("x-cache"), Some("MISS"), "{name}");
        assert_ne!(back.text(), body, "{name}: the new body");
        // ... and is kept for its own lifetime, as a first answer is: the next read is a hit.
        let calls = mock.calls();
        let again = c.get(tg.public_addr(), "/task/t1").await;
        assert_eq!(again.header("x-cache"), Some("HIT"), "{name}");
        assert_eq!(again.body, back.body, "{name}");
        assert_eq!(mock.calls(), calls, "{name}: no call for the hit");
    }
}

#[tokio::test]
async fn no_upstream_slot_in_time_gives_the_kept_answer_as_stale() {
    let mock = MockUpstream::start().await;
    for hog in ["hog-1", "hog-2"] {
        mock.set(
            hog,
            Reply::task(hog, "running").delay(Duration::from_secs(2)),
        );
    }
    // One slot for this client (and 500 ms to wait for it): `hog-1` holds it until its own
    // upstream timeout; `hog-2`, queued 100 ms later, gets it then (its wait ends 100 ms after
    // that) and holds it as long; the refresh, queued behind them, gets none in time.
    let tg = taskgate(&mock, |c| {
        c.ttl_completed = TTL;
        c.upstream_concurrency = 1;
        c.upstream_timeout = Duration::from_millis(500);
    })
    .await;
    let c = HttpClient::default();
    let body = expired(&mock, &tg, &c).await;
    let addr = tg.public_addr();
    let mut hogs = Vec::new();
    for hog in ["hog-1", "hog-2"] {
        let path = format!("/task/{hog}");
        hogs.push(tokio::spawn(async move {
            HttpClient::default().get(addr, &path).await
        }));
        while !mock.seen().iter().any(|s| s.uri.contains("/task/hog-")) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("x-cache"), Some("STALE"));
    assert_eq!(got.text(), body);
    assert_eq!(
        mock.seen()
            .iter()
            .filter(|s| s.uri.ends_with("/task/t1"))
            .count(),
        1,
        "no refresh went upstream"
    );
    for hog in hogs {
        // Each timed out upstream (504); not the point here.
        hog.await.unwrap();
    }
}

#[tokio::test]
async fn a_404_replaces_a_kept_answer() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |c| c.ttl_completed = TTL).await;
    let c = HttpClient::default();
    expired(&mock, &tg, &c).await;
    mock.set("t1", Reply::json(404, r#"{"errors":["not found"]}"#));
    let got = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.header("x-cache"), Some("MISS"));
    // And the 404 is what is kept now, not the old answer.
    mock.set("t1", Reply::json(503, r#"{"errors":["down"]}"#));
    tokio::time::sleep(Duration::from_millis(5_100)).await; // TTL_NOT_FOUND
    let after = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(
        after.status,
        StatusCode::BAD_GATEWAY,
        "a 404 is never served stale"
    );
}

#[tokio::test]
async fn unfinished_work_and_errors_are_never_served_stale() {
    let mock = MockUpstream::start().await;
    mock.set("run", Reply::task("run", "running"));
    let tg = taskgate(&mock, |c| c.ttl_pending = TTL).await;
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.public_addr(), "/task/run").await.header("x-cache"),
        Some("MISS")
    );
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    mock.set("run", Reply::json(503, r#"{"errors":["down"]}"#));
    let got = c.get(tg.public_addr(), "/task/run").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.header("x-cache"), Some("PASS"));
}
