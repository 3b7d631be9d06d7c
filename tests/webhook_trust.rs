//! Webhook-trusted caching: with `TASKGATE_WEBHOOK_TRUST_TTL` and a webhook secret, unfinished
//! answers are kept until a signed webhook names their id, so polling tabs cost about one API
//! call per change; an answer older than the version a webhook announced is never stored.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{taskgate, HttpClient, MockUpstream, Reply};
use http::StatusCode;
use taskgate::config::{Config, Secret};

const SECRET: &str = "whsec_trust_9c2e";

fn running(id: &str, updated: u64, progress: f64) -> Reply {
    Reply::json(
        200,
        format!(
            r#"{{"id":"{id}","status":{{"phase":"running","updatedAt":{updated},"progress":{progress}}}}}"#
        ),
    )
}

fn trusting(ttl: Duration) -> impl FnOnce(&mut Config) {
    move |c| {
        c.webhook_secret = Some(Secret::new(SECRET));
        c.webhook_trust_ttl = ttl;
    }
}

/// Sends `task.updated` for `id`, announcing `version` in its snapshot; signed as Studio does.
async fn task_updated(addr: SocketAddr, event_id: &str, id: &str, version: u64) -> StatusCode {
    common::task_updated(addr, SECRET, event_id, id, version).await
}

#[tokio::test]
async fn twenty_polls_of_a_running_task_cost_one_call_and_a_webhook_refreshes_it() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 100, 0.1));
    let tg = taskgate(&mock, trusting(Duration::from_secs(60))).await;
    let c = HttpClient::default();
    for i in 0..20 {
        let got = c.get(tg.public_addr(), "/task/t1").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            got.header("x-cache"),
            Some(if i == 0 { "MISS" } else { "HIT" })
        );
        // Browsers still must not keep unfinished work.
        assert_eq!(got.header("cache-control"), Some("no-store"));
    }
    assert_eq!(mock.calls(), 1);

    // Studio says it moved: the next poll fetches and shows the new state.
    mock.set("t1", running("t1", 200, 0.5));
    assert_eq!(
        task_updated(tg.public_addr(), "evt-1", "t1", 200).await,
        StatusCode::NO_CONTENT
    );
    let got = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(got.header("x-cache"), Some("MISS"));
    assert_eq!(got.json()["status"]["progress"], 0.5);
    assert_eq!(
        c.get(tg.public_addr(), "/task/t1").await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(mock.calls(), 2);
    let m = c.get(tg.admin_addr(), "/metrics").await.text();
    let age: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("taskgate_webhook_last_accepted_seconds "))
        .expect("the gauge is exported")
        .parse()
        .unwrap();
    assert!((0.0..10.0).contains(&age), "{age}");
}

#[tokio::test]
async fn an_answer_older_than_the_announced_version_is_never_cached() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 100, 0.1));
    let tg = taskgate(&mock, trusting(Duration::from_secs(60))).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), "/task/t1").await;
    // Past the first catch-up delay: only the lagging answer below may start a catch-up.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The webhook announces version 200, but the API's replica still answers version 100.
    assert_eq!(
        task_updated(tg.public_addr(), "evt-2", "t1", 200).await,
        StatusCode::NO_CONTENT
    );
    let lagging = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(
        lagging.json()["status"]["updatedAt"],
        100,
        "served to whoever asked"
    );
    assert_eq!(lagging.header("x-cache"), Some("PASS"), "but not stored");
    // The replica catches up; taskgate fetches again by itself after a short delay (250 ms),
    // so by the time the next tab polls, the announced version is cached.
    mock.set("t1", running("t1", 200, 0.5));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(
        got.header("x-cache"),
        Some("HIT"),
        "fetched again without a client"
    );
    assert_eq!(
        got.json()["status"]["updatedAt"],
        200,
        "never the older answer"
    );
    assert_eq!(mock.calls(), 3);
}

#[tokio::test]
async fn only_an_answer_behind_a_webhook_is_fetched_again_without_a_client() {
    let mock = MockUpstream::start().await;
    mock.set("down", Reply::json(503, r#"{"errors":["down"]}"#));
    let tg = taskgate(&mock, trusting(Duration::from_secs(60))).await;
    let c = HttpClient::default();
    let failed = c.get(tg.public_addr(), "/task/down").await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    // An answer not stored for another reason than being behind a webhook is not chased:
    // the next client's poll asks again, nothing in the background does.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn a_lost_webhook_is_bounded_by_the_trust_ttl() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 100, 0.1));
    let ttl = Duration::from_millis(500);
    let tg = taskgate(&mock, trusting(ttl)).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), "/task/t1").await;
    mock.set("t1", running("t1", 200, 0.5)); // and no webhook arrives
    let within = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(within.json()["status"]["progress"], 0.1);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let after = c.get(tg.public_addr(), "/task/t1").await;
    assert_eq!(after.header("x-cache"), Some("MISS"));
    assert_eq!(after.json()["status"]["progress"], 0.5);
}

#[tokio::test]
async fn without_a_webhook_secret_the_trust_ttl_changes_nothing() {
    let mock = MockUpstream::start().await;
    mock.set("t1", running("t1", 100, 0.1));
    let tg = taskgate(&mock, |c| c.webhook_trust_ttl = Duration::from_secs(60)).await;
    let c = HttpClient::default();
    for _ in 0..3 {
        assert_eq!(
            c.get(tg.public_addr(), "/task/t1").await.header("x-cache"),
            Some("PASS")
        );
    }
    assert_eq!(mock.calls(), 3);
}
