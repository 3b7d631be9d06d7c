//! Studio webhooks: signed, fresh, first-seen task events drop the task from the cache and
//! refresh its watchers; anything else changes nothing. Signatures here are computed with
//! the `hmac` and `sha2` crates, independently of taskgate's own (ring) implementation.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{taskgate, HttpClient, MockUpstream, Reply, SseReader};
use hmac::{Hmac, Mac};
use http::StatusCode;
use sha2::Sha256;
use taskgate::config::Secret;

const SECRET: &str = "whsec_test_5b1f";
const TASK: &str = "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn event(event_id: &str, event: &str, task: &str, at: u64) -> String {
    format!(
        r#"{{"id":"{event_id}","webhookId":"wh1","createdAt":{at},"timestamp":{at},"event":"{event}","payload":{{"task":{{"id":"{task}","type":"upload","snapshot":{{}}}}}}}}"#
    )
}

async fn post(addr: SocketAddr, body: &str, signature: Option<String>) -> common::Got {
    use http_body_util::{BodyExt, Full};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::post(format!("http://{addr}/webhooks/livepeer"))
        .header("content-type", "application/json")
        .header("user-agent", "livepeer.studio");
    if let Some(sig) = signature {
        req = req.header("livepeer-signature", sig);
    }
    let resp = client
        .request(req.body(Full::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    common::Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn signed(body: &str, t: u64) -> Option<String> {
    Some(format!("t={t},v1={}", sign(SECRET, body.as_bytes())))
}

async fn cached_then_webhooked(
    webhook: impl FnOnce(
        SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = common::Got>>>,
) -> (StatusCode, Option<String>, usize) {
    let mock = MockUpstream::start().await;
    mock.set(TASK, Reply::task(TASK, "failed"));
    let tg = taskgate(&mock, |c| c.webhook_secret = Some(Secret::new(SECRET))).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), &format!("/task/{TASK}")).await;
    assert_eq!(
        c.get(tg.public_addr(), &format!("/task/{TASK}"))
            .await
            .header("x-cache"),
        Some("HIT")
    );
    let got = webhook(tg.public_addr()).await;
    let next = c.get(tg.public_addr(), &format!("/task/{TASK}")).await;
    (
        got.status,
        next.header("x-cache").map(str::to_owned),
        mock.calls(),
    )
}

#[tokio::test]
async fn a_signed_task_event_drops_the_task_from_the_cache() {
    let (status, next, calls) = cached_then_webhooked(|addr| {
        Box::pin(async move {
            let body = event("ev-1", "task.updated", TASK, now_ms());
            post(addr, &body, signed(&body, now_ms())).await
        })
    })
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        next.as_deref(),
        Some("MISS"),
        "the next request went upstream"
    );
    assert_eq!(calls, 2);
}

#[tokio::test]
async fn a_bad_signature_changes_nothing() {
    let (status, next, calls) = cached_then_webhooked(|addr| {
        Box::pin(async move {
            let body = event("ev-1", "task.updated", TASK, now_ms());
            let wrong = format!(
                "t={},v1={}",
                now_ms(),
                sign("another-secret", body.as_bytes())
            );
            post(addr, &body, Some(wrong)).await
        })
    })
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!((next.as_deref(), calls), (Some("HIT"), 1));
}

#[tokio::test]
async fn a_body_reserialised_with_other_whitespace_fails_the_signature() {
    let (status, next, calls) = cached_then_webhooked(|addr| {
        Box::pin(async move {
            let compact = event("ev-1", "task.updated", TASK, now_ms());
            let value: serde_json::Value = serde_json::from_str(&compact).unwrap();
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            post(addr, &pretty, signed(&compact, now_ms())).await
        })
    })
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!((next.as_deref(), calls), (Some("HIT"), 1));
}

#[tokio::test]
async fn a_stale_call_changes_nothing() {
    let (status, next, calls) = cached_then_webhooked(|addr| {
        Box::pin(async move {
            let then = now_ms() - 6 * 60 * 1000;
            let body = event("ev-1", "task.updated", TASK, then);
            post(addr, &body, signed(&body, then)).await
        })
    })
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!((next.as_deref(), calls), (Some("HIT"), 1));
}

#[tokio::test]
async fn an_oversized_body_is_413_and_changes_nothing() {
    let (status, next, calls) = cached_then_webhooked(|addr| {
        Box::pin(async move {
            let body = format!(
                r#"{{"id":"ev-big","event":"task.updated","payload":{{"task":{{"id":"{TASK}"}}}},"pad":"{}"}}"#,
                "x".repeat(70 * 1024)
            );
            post(addr, &body, signed(&body, now_ms())).await
        })
    })
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!((next.as_deref(), calls), (Some("HIT"), 1));
}

#[tokio::test]
async fn duplicates_and_other_events_are_acknowledged_and_ignored() {
    let mock = MockUpstream::start().await;
    mock.set(TASK, Reply::task(TASK, "completed"));
    let tg = taskgate(&mock, |c| c.webhook_secret = Some(Secret::new(SECRET))).await;
    let addr = tg.public_addr();
    let first = event("ev-7", "task.completed", TASK, now_ms());
    assert_eq!(
        post(addr, &first, signed(&first, now_ms())).await.status,
        StatusCode::NO_CONTENT
    );
    // Studio retries keep the event id (re-signed with a new time).
    assert_eq!(
        post(addr, &first, signed(&first, now_ms() + 1))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let other = event("ev-8", "asset.ready", TASK, now_ms());
    assert_eq!(
        post(addr, &other, signed(&other, now_ms())).await.status,
        StatusCode::NO_CONTENT
    );
    let unsigned = post(addr, &first, None).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    let m = HttpClient::default()
        .get(tg.admin_addr(), "/metrics")
        .await
        .text();
    for (outcome, n) in [
        ("accepted", 1),
        ("duplicate", 1),
        ("ignored", 1),
        ("bad_signature", 1),
    ] {
        let line = format!("taskgate_webhooks_total{{outcome=\"{outcome}\"}} {n}");
        assert!(m.contains(&line), "missing {line} in\n{m}");
    }
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn the_route_exists_only_with_a_secret_and_only_for_post() {
    let mock = MockUpstream::start().await;
    let off = taskgate(&mock, |_| {}).await;
    let body = event("ev-1", "task.updated", TASK, now_ms());
    assert_eq!(
        post(off.public_addr(), &body, signed(&body, now_ms()))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let on = taskgate(&mock, |c| c.webhook_secret = Some(Secret::new(SECRET))).await;
    let get = HttpClient::default()
        .get(on.public_addr(), "/webhooks/livepeer")
        .await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.header("allow"), Some("POST"));
}

#[tokio::test]
async fn a_webhook_makes_watchers_see_the_change_at_once() {
    let mock = MockUpstream::start().await;
    let running = |p: f64, u: u64| {
        Reply::json(
            200,
            format!(
                r#"{{"id":"{TASK}","status":{{"phase":"running","updatedAt":{u},"progress":{p}}}}}"#
            ),
        )
    };
    mock.set(TASK, running(0.2, 1));
    // A long interval: without the webhook the change would not be seen for a minute.
    let tg = taskgate(&mock, |c| {
        c.webhook_secret = Some(Secret::new(SECRET));
        c.watch_interval = Duration::from_secs(60);
    })
    .await;
    let mut watchers = Vec::new();
    for _ in 0..5 {
        let mut s = SseReader::open(tg.public_addr(), &format!("/task/{TASK}/events"), &[]).await;
        assert_eq!(
            s.next(Duration::from_secs(5)).await.unwrap().id.as_deref(),
            Some("1")
        );
        watchers.push(s);
    }
    mock.set(
        TASK,
        Reply::json(
            200,
            format!(r#"{{"id":"{TASK}","status":{{"phase":"completed","updatedAt":2}}}}"#),
        ),
    );
    let body = event("ev-9", "task.completed", TASK, now_ms());
    let sent = std::time::Instant::now();
    assert_eq!(
        post(tg.public_addr(), &body, signed(&body, now_ms()))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    for s in &mut watchers {
        let e = s
            .next(Duration::from_secs(5))
            .await
            .expect("the change arrives");
        assert_eq!(e.id.as_deref(), Some("2"));
    }
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "seen in {:?}, far under the 60 s interval",
        sent.elapsed()
    );
}
