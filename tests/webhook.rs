//! Studio webhooks: signed, fresh, first-seen task events drop the task from the cache and
//! refresh its watchers; anything else changes nothing. Signatures here are computed with
//! the `hmac` and `sha2` crates, independently of taskgate's own (ring) implementation.
//! As Studio sends them, a body's `timestamp` is the send time and equals the header's `t`.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{taskgate, HttpClient, MockUpstream, Reply, SseReader};
use http::StatusCode;
use taskgate::config::Secret;

const SECRET: &str = "whsec_test_5b1f";
const TASK: &str = "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

use common::hmac_sha256_hex as sign;

/// An event created and sent at `at` (its first delivery).
fn event(event_id: &str, event: &str, task: &str, at: u64) -> String {
    event_sent(event_id, event, task, at, at)
}

/// An event created at `created`, sent (`timestamp`) at `sent`: a retry has `sent > created`.
fn event_sent(event_id: &str, event: &str, task: &str, created: u64, sent: u64) -> String {
    format!(
        r#"{{"id":"{event_id}","webhookId":"wh1","createdAt":{created},"timestamp":{sent},"event":"{event}","payload":{{"task":{{"id":"{task}","type":"upload","snapshot":{{}}}}}}}}"#
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
            let t = now_ms();
            let body = event("ev-1", "task.updated", TASK, t);
            post(addr, &body, signed(&body, t)).await
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
            let t = now_ms();
            let body = event("ev-1", "task.updated", TASK, t);
            let wrong = format!("t={t},v1={}", sign("another-secret", body.as_bytes()));
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
            let t = now_ms();
            let compact = event("ev-1", "task.updated", TASK, t);
            let value: serde_json::Value = serde_json::from_str(&compact).unwrap();
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            post(addr, &pretty, signed(&compact, t)).await
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
    let created = now_ms();
    let first = event("ev-7", "task.completed", TASK, created);
    assert_eq!(
        post(addr, &first, signed(&first, created)).await.status,
        StatusCode::NO_CONTENT
    );
    // Studio retries keep the event id (re-sent with a new `timestamp`, re-signed).
    let resent = created + 1;
    let retry = event_sent("ev-7", "task.completed", TASK, created, resent);
    assert_eq!(
        post(addr, &retry, signed(&retry, resent)).await.status,
        StatusCode::NO_CONTENT
    );
    let t = now_ms();
    let other = event("ev-8", "asset.ready", TASK, t);
    assert_eq!(
        post(addr, &other, signed(&other, t)).await.status,
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
    let t = now_ms();
    let body = event("ev-1", "task.updated", TASK, t);
    assert_eq!(
        post(off.public_addr(), &body, signed(&body, t))
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
    let t = now_ms();
    let body = event("ev-9", "task.completed", TASK, t);
    let sent = std::time::Instant::now();
    assert_eq!(
        post(tg.public_addr(), &body, signed(&body, t)).await.status,
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

/// Issue 16 finding 3: a body signed long ago, replayed with `t` rewritten to now and a valid
/// signature over that body, is stale: freshness comes from the signed `timestamp`.
#[tokio::test]
async fn a_replayed_body_under_a_rewritten_t_changes_nothing() {
    let (status, next, calls) = cached_then_webhooked(|addr| {
        Box::pin(async move {
            let then = now_ms() - 10 * 60 * 1000;
            let body = event("ev-old", "task.updated", TASK, then);
            post(addr, &body, signed(&body, now_ms())).await
        })
    })
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!((next.as_deref(), calls), (Some("HIT"), 1));
}

/// Issue 16 finding 2: a header with thousands of `v1` tags is refused as a whole, even
/// when one of them is right (each would have cost an HMAC of the body). That nothing is
/// hashed for it is counted in `webhook::tests`.
#[tokio::test]
async fn thousands_of_tags_are_refused_even_with_the_right_one_among_them() {
    let (status, next, calls) = cached_then_webhooked(|addr| {
        Box::pin(async move {
            let t = now_ms();
            let body = event("ev-1", "task.updated", TASK, t);
            let good = sign(SECRET, body.as_bytes());
            let empty = format!("t={t},{}v1={good}", "v1=,".repeat(7000));
            assert_eq!(
                post(addr, &body, Some(empty)).await.status,
                StatusCode::UNAUTHORIZED
            );
            // Hundreds of well-formed tags (the request head is capped at 32 KiB).
            let wrong = format!("v1={},", "ab".repeat(32));
            let many = format!("t={t},{}v1={good}", wrong.repeat(400));
            post(addr, &body, Some(many)).await
        })
    })
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!((next.as_deref(), calls), (Some("HIT"), 1));
}

/// A few tags (as during a rotation) are fine: the right one may be any of them.
#[tokio::test]
async fn the_right_tag_among_a_few_is_accepted() {
    let (status, next, calls) = cached_then_webhooked(|addr| {
        Box::pin(async move {
            let t = now_ms();
            let body = event("ev-1", "task.updated", TASK, t);
            let tags = format!(
                "v1={},v1={}",
                sign("old-secret", body.as_bytes()),
                sign(SECRET, body.as_bytes()).to_uppercase()
            );
            post(addr, &body, Some(format!("t={t},{tags}"))).await
        })
    })
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!((next.as_deref(), calls), (Some("MISS"), 2));
}

/// Issue 16 finding 3: an event without an id could never be deduplicated: refused (400:
/// the call is authentic and fresh, but unusable), and nothing changes.
#[tokio::test]
async fn an_event_without_an_id_is_refused_and_changes_nothing() {
    let (status, next, calls) = cached_then_webhooked(|addr| {
        Box::pin(async move {
            let t = now_ms();
            let body = format!(
                r#"{{"webhookId":"wh1","createdAt":{t},"timestamp":{t},"event":"task.updated","payload":{{"task":{{"id":"{TASK}"}}}}}}"#
            );
            post(addr, &body, signed(&body, t)).await
        })
    })
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!((next.as_deref(), calls), (Some("HIT"), 1));
}

/// Issue 16 finding 2: the route spends the same per-client budget as reads.
#[tokio::test]
async fn the_route_is_under_the_per_client_rate_limit() {
    let mock = MockUpstream::start().await;
    mock.set(TASK, Reply::task(TASK, "completed"));
    let tg = taskgate(&mock, |c| {
        c.webhook_secret = Some(Secret::new(SECRET));
        c.rate_limit = 0.01;
        c.rate_burst = 3.0;
    })
    .await;
    let addr = tg.public_addr();
    let c = HttpClient::default();
    assert_eq!(
        c.get(addr, &format!("/task/{TASK}")).await.status,
        StatusCode::OK
    );
    let t = now_ms();
    let body = event("ev-1", "task.completed", TASK, t);
    let junk = Some(format!("t={t},v1={}", "00".repeat(32)));
    assert_eq!(
        post(addr, &body, junk.clone()).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(addr, &body, junk.clone()).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The budget (3) is spent: webhooks and reads alike wait.
    let limited = post(addr, &body, junk).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.header("retry-after").is_some());
    let good = post(addr, &body, signed(&body, t)).await;
    assert_eq!(good.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        c.get(addr, &format!("/task/{TASK}")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(mock.calls(), 1);
}

/// Review finding: a body announced and never sent held the connection forever. A call
/// without a well-formed, fresh signature header is now refused on its head (the body never
/// read, the connection closed); one with such a header gets `TASKGATE_HEADER_TIMEOUT` for
/// its body, then `408` and the connection closed.
#[tokio::test]
async fn a_body_that_never_arrives_cannot_hold_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |c| {
        c.webhook_secret = Some(Secret::new(SECRET));
        c.header_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = tg.public_addr();
    let answer = |head: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let start = std::time::Instant::now();
        let mut got = Vec::new();
        // Until the server closes: the whole answer, then EOF.
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("the connection is closed")
            .unwrap();
        (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
    };
    let head = |signature: &str| {
        format!(
            "POST /webhooks/livepeer HTTP/1.1\r\nHost: t\r\nContent-Length: 65536\r\n\
             {signature}\r\n"
        )
    };

    // No signature, a malformed one, a stale one: refused at once.
    let tag = "ab".repeat(32);
    for signature in [
        String::new(),
        "Livepeer-Signature: t=1,v1=zz\r\n".to_owned(),
        format!(
            "Livepeer-Signature: t={},v1={tag}\r\n",
            now_ms() - 3_600_000
        ),
    ] {
        let (got, took) = answer(head(&signature)).await;
        assert!(got.starts_with("HTTP/1.1 401"), "{signature:?}: {got}");
        assert!(took < Duration::from_millis(400), "{signature:?}: {took:?}");
    }
    // A fresh, well-formed header: the body is waited for, but only so long.
    let (got, took) = answer(head(&format!(
        "Livepeer-Signature: t={},v1={tag}\r\n",
        now_ms()
    )))
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert_eq!(mock.calls(), 0);
}
