//! Watching a task over Server-Sent Events: one upstream poller per id however many watch,
//! events only on change, the stream ends after a finished phase.

mod common;

use std::time::{Duration, Instant};

use common::{taskgate, HttpClient, MockUpstream, Reply, SseReader};
use http::StatusCode;
use taskgate::config::CorsOrigins;

fn running(id: &str, progress: f64, updated: u64) -> Reply {
    Reply::json(
        200,
        format!(
            r#"{{"id":"{id}","status":{{"phase":"running","updatedAt":{updated},"progress":{progress}}}}}"#
        ),
    )
}

fn completed(id: &str, updated: u64) -> Reply {
    Reply::json(
        200,
        format!(r#"{{"id":"{id}","status":{{"phase":"completed","updatedAt":{updated}}}}}"#),
    )
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_watch_gets_the_task_at_once_then_each_change_then_ends_at_completed() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 0.1, 1));
    let tg = taskgate(&mock, |c| c.watch_interval = Duration::from_millis(100)).await;
    let mut s = SseReader::open(tg.public_addr(), "/task/t1/events", &[]).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-store");
    let first = s.next(WAIT).await.expect("the current answer at once");
    assert_eq!(
        (first.event.as_str(), first.id.as_deref()),
        ("task", Some("1"))
    );
    assert!(first.data.contains(r#""progress":0.1"#));
    // Unchanged polls send nothing.
    assert!(s.next(Duration::from_millis(350)).await.is_none());
    mock.set("t1", running("t1", 0.5, 2));
    let second = s.next(WAIT).await.unwrap();
    assert_eq!(second.id.as_deref(), Some("2"));
    mock.set("t1", completed("t1", 3));
    let last = s.next(WAIT).await.unwrap();
    assert_eq!(last.id.as_deref(), Some("3"));
    assert!(last.data.contains("completed"));
    assert!(
        s.ended(WAIT).await,
        "the stream closes after a finished phase"
    );
}

#[tokio::test]
async fn a_hundred_watchers_cost_one_upstream_call_per_interval() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 0.1, 1));
    let interval = Duration::from_millis(250);
    let tg = taskgate(&mock, |c| {
        c.watch_interval = interval;
        c.watch_max_per_client = 100; // one test client holds all hundred
    })
    .await;
    let started = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..100 {
        streams.push(SseReader::open(tg.public_addr(), "/api/task/t1/events", &[]).await);
    }
    for s in &mut streams {
        assert_eq!(s.next(WAIT).await.unwrap().id.as_deref(), Some("1"));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    mock.set("t1", running("t1", 0.6, 2));
    for s in &mut streams {
        assert_eq!(
            s.next(WAIT).await.unwrap().id.as_deref(),
            Some("2"),
            "every watcher sees the change"
        );
    }
    mock.set("t1", completed("t1", 3));
    for s in &mut streams {
        assert_eq!(s.next(WAIT).await.unwrap().id.as_deref(), Some("3"));
        assert!(s.ended(WAIT).await);
    }
    let intervals = started.elapsed().as_millis() / interval.as_millis();
    let calls = mock.calls() as u128;
    assert!(
        calls <= intervals + 2,
        "{calls} upstream calls in {intervals} intervals"
    );
    assert!(calls >= 3);
    let m = HttpClient::default()
        .get(tg.admin_addr(), "/metrics")
        .await
        .text();
    assert!(m.contains("taskgate_watch_events_sent_total 300"), "{m}");
}

#[tokio::test]
async fn a_watcher_that_leaves_stops_costing_anything() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 0.1, 1));
    let tg = taskgate(&mock, |c| c.watch_interval = Duration::from_millis(100)).await;
    let mut s = SseReader::open(tg.public_addr(), "/task/t1/events", &[]).await;
    assert!(s.next(WAIT).await.is_some());
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = mock.calls();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        mock.calls(),
        calls,
        "no more upstream calls once nobody watches"
    );
    let (ids, streams) = tg.proxy().watchers().counts();
    assert_eq!((ids, streams), (0, 0));
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_no_duplicate() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 0.1, 7));
    let tg = taskgate(&mock, |c| c.watch_interval = Duration::from_millis(100)).await;
    let mut s = SseReader::open(
        tg.public_addr(),
        "/task/t1/events",
        &[("last-event-id", "7")],
    )
    .await;
    assert!(
        s.next(Duration::from_millis(400)).await.is_none(),
        "event 7 is not sent again"
    );
    mock.set("t1", running("t1", 0.2, 8));
    assert_eq!(s.next(WAIT).await.unwrap().id.as_deref(), Some("8"));
    // Once the task is finished and cached, a reconnect naming its last event gets 204:
    // the answer that tells an EventSource to stop reconnecting.
    mock.set("t1", completed("t1", 9));
    assert_eq!(s.next(WAIT).await.unwrap().id.as_deref(), Some("9"));
    let again = SseReader::open(
        tg.public_addr(),
        "/task/t1/events",
        &[("last-event-id", "9")],
    )
    .await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    // A reconnect that missed the last event gets it, and then the end.
    let mut behind = SseReader::open(
        tg.public_addr(),
        "/task/t1/events",
        &[("last-event-id", "8")],
    )
    .await;
    assert_eq!(behind.status, StatusCode::OK);
    assert_eq!(behind.next(WAIT).await.unwrap().id.as_deref(), Some("9"));
    assert!(behind.ended(WAIT).await);
}

#[tokio::test]
async fn a_404_or_an_upstream_failure_is_an_error_event_then_the_end() {
    let mock = MockUpstream::start().await;
    mock.set("boom", Reply::json(503, "{}"));
    let tg = taskgate(&mock, |_| {}).await;
    for (id, message) in [("missing", "not found"), ("boom", "upstream error")] {
        let mut s = SseReader::open(tg.public_addr(), &format!("/task/{id}/events"), &[]).await;
        let e = s.next(WAIT).await.unwrap();
        assert_eq!(e.event, "error", "{id}");
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["errors"][0], message);
        assert!(s.ended(WAIT).await);
    }
}

#[tokio::test]
async fn a_stream_is_not_served_to_head_or_post_and_costs_the_api_nothing() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 0.1, 1));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for method in ["HEAD", "POST", "DELETE"] {
        let got = c
            .send(tg.public_addr(), method, "/task/t1/events", &[])
            .await;
        assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert!(got.header("allow").is_some(), "{method}");
    }
    // A HEAD of the resource itself is fine.
    let head = c.send(tg.public_addr(), "HEAD", "/task/t1", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mock.calls(),
        1,
        "only the HEAD of the resource went upstream"
    );
}

#[tokio::test]
async fn past_watch_max_a_new_id_gets_503() {
    let mock = MockUpstream::start().await;
    mock.set("a", running("a", 0.1, 1));
    mock.set("b", running("b", 0.1, 1));
    let tg = taskgate(&mock, |c| c.watch_max = 1).await;
    let mut a = SseReader::open(tg.public_addr(), "/task/a/events", &[]).await;
    assert!(a.next(WAIT).await.is_some());
    let b = SseReader::open(tg.public_addr(), "/task/b/events", &[]).await;
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE);
    let a2 = SseReader::open(tg.public_addr(), "/task/a/events", &[]).await;
    assert_eq!(
        a2.status,
        StatusCode::OK,
        "more watchers of a watched id are fine"
    );
}

#[tokio::test]
async fn cors_and_the_rate_limit_apply_to_streams() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 0.1, 1));
    let app = "https://app.example";
    let tg = taskgate(&mock, |c| {
        c.cors_origins = CorsOrigins::List(vec![app.into()]);
        c.rate_limit = 0.1;
        c.rate_burst = 1.0;
    })
    .await;
    let s = SseReader::open(tg.public_addr(), "/task/t1/events", &[("origin", app)]).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.headers["access-control-allow-origin"], app);
    let limited = SseReader::open(tg.public_addr(), "/task/t1/events", &[("origin", app)]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let head = HttpClient::default()
        .send(tg.public_addr(), "POST", "/task/t1/events", &[])
        .await;
    assert_eq!(head.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 0.1, 1));
    let tg = taskgate(&mock, |_| {}).await;
    let mut s = SseReader::open(tg.public_addr(), "/task/t1/events", &[]).await;
    assert!(s.next(WAIT).await.is_some());
    tg.shutdown();
    assert!(s.ended(WAIT).await);
    tokio::time::timeout(WAIT, tg.wait())
        .await
        .expect("the drain does not wait on streams");
}

#[tokio::test]
async fn a_watcher_whose_task_never_changes_is_retired_with_a_retry_hint() {
    let mock = MockUpstream::start().await;
    mock.set("stuck", running("stuck", 0.5, 1));
    // Retired after 150 unchanged polls: 1.5 s at a 10 ms interval.
    let tg = taskgate(&mock, |c| c.watch_interval = Duration::from_millis(10)).await;
    let started = Instant::now();
    let mut s = SseReader::open(tg.public_addr(), "/task/stuck/events", &[]).await;
    let first = s.next(WAIT).await.expect("the current answer at once");
    assert_eq!(first.event, "task");
    let retired = s.next(WAIT).await.expect("a last frame before the end");
    assert_eq!(
        (retired.event.as_str(), retired.data.as_str()),
        ("message", "")
    );
    assert!(s.ended(WAIT).await, "the stream ends after the retry hint");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    // The poller stopped with it.
    let calls = mock.calls();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mock.calls(), calls, "no polling after retirement");
}

#[tokio::test]
async fn one_client_cannot_take_every_watch() {
    let mock = MockUpstream::start().await;
    for id in ["a", "b", "c", "d"] {
        mock.set(id, running(id, 0.1, 1));
    }
    let tg = taskgate(&mock, |c| {
        c.watch_max_per_client = 2;
        c.watch_interval = Duration::from_millis(100);
    })
    .await;
    let mut a = SseReader::open(tg.public_addr(), "/task/a/events", &[]).await;
    let b = SseReader::open(tg.public_addr(), "/task/b/events", &[]).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert!(a.next(WAIT).await.is_some());
    let third = HttpClient::default()
        .get(tg.public_addr(), "/task/c/events")
        .await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        third.json()["errors"][0],
        "too many watches from this client"
    );
    // Closing a stream gives its slot back.
    drop(b);
    let deadline = Instant::now() + WAIT;
    loop {
        let d = SseReader::open(tg.public_addr(), "/task/d/events", &[]).await;
        if d.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
