//! The upstream fault matrix: for each way the API can misbehave, what the client gets, that
//! nothing erroneous or unfinished is cached, that the key appears nowhere, and that the next
//! request after recovery succeeds.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{taskgate, HttpClient, MockUpstream, Reply, KEY};
use http::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const ID: &str = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69";

/// Pieces of a raw answer, each written then followed by a pause.
type Script = Arc<Mutex<Vec<(Vec<u8>, Duration)>>>;

/// A raw TCP upstream that answers every connection with scripted bytes, written in pieces
/// with pauses, then closes: for faults a well-behaved HTTP server cannot produce.
struct RawUpstream {
    addr: std::net::SocketAddr,
    script: Script,
    connections: Arc<AtomicUsize>,
    /// Connections whose peer (taskgate) closed them while the script was still running.
    closed_by_peer: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Script = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let (s, c, o) = (script.clone(), connections.clone(), closed_by_peer.clone());
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let (s, o) = (s.clone(), o.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tcp.read(&mut buf).await; // the request head
                    let pieces = s.lock().unwrap().clone();
                    for (bytes, pause) in pieces {
                        if tcp.write_all(&bytes).await.is_err() {
                            break;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            read = tcp.read(&mut buf) => {
                                if matches!(read, Ok(0) | Err(_)) {
                                    o.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            script,
            connections,
            closed_by_peer,
        }
    }

    fn script(&self, pieces: Vec<(&[u8], Duration)>) {
        *self.script.lock().unwrap() = pieces.into_iter().map(|(b, d)| (b.to_vec(), d)).collect();
    }

    fn base_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }
}

const NOW: Duration = Duration::ZERO;

/// Runs one raw fault: the status the client gets, and that nothing was cached.
async fn raw_fault(pieces: Vec<(&[u8], Duration)>, timeout: Duration) -> (StatusCode, String) {
    let up = RawUpstream::start().await;
    up.script(pieces);
    let mut cfg = common::config(&up.base_url());
    cfg.upstream_timeout = timeout;
    let tg = taskgate::start(cfg).await.unwrap();
    let got = HttpClient::default()
        .get(tg.public_addr(), &format!("/task/{ID}"))
        .await;
    assert!(
        tg.proxy().cache().get(&common::task_key(ID)).is_none(),
        "a fault was cached"
    );
    assert!(!got.text().contains(KEY));
    // Recovery: the same upstream now answers properly.
    let body = common::task_body(ID, "completed");
    let ok = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    up.script(vec![(ok.as_bytes(), NOW)]);
    let next = HttpClient::default()
        .get(tg.public_addr(), &format!("/task/{ID}"))
        .await;
    assert_eq!(next.status, StatusCode::OK, "recovered");
    (got.status, got.text())
}

#[tokio::test]
async fn slow_headers_past_the_timeout_are_504_and_the_connection_is_not_leaked() {
    let up = RawUpstream::start().await;
    up.script(vec![(b"HTTP/1.1 200 OK\r\n", Duration::from_secs(3))]);
    let mut cfg = common::config(&up.base_url());
    cfg.upstream_timeout = Duration::from_millis(300);
    let tg = taskgate::start(cfg).await.unwrap();
    let started = Instant::now();
    let got = HttpClient::default()
        .get(tg.public_addr(), &format!("/task/{ID}"))
        .await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
    // taskgate dropped its end rather than keep it: the upstream sees the close long before
    // its 3 s pause is over.
    let deadline = Instant::now() + Duration::from_secs(2);
    while up.closed_by_peer.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the timed-out connection was kept open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_trickled_body_past_the_timeout_is_504() {
    let head: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
    let pieces: Vec<(&[u8], Duration)> = (0..20)
        .map(|_| (&b" "[..], Duration::from_millis(100)))
        .collect();
    let mut script = vec![(head, Duration::from_millis(50))];
    script.extend(pieces);
    let (status, _) = raw_fault(script, Duration::from_millis(500)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn a_reset_mid_body_is_502() {
    let (status, body) = raw_fault(
        vec![(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"status\":", NOW)],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("upstream unavailable"), "{body}");
}

#[tokio::test]
async fn a_truncated_chunked_body_is_502() {
    let (status, _) = raw_fault(
        vec![(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n10\r\n{\"status\":{\"ph", NOW)],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn garbage_instead_of_http_is_502() {
    let (status, _) = raw_fault(
        vec![(b"SSH-2.0-OpenSSH_9.2\r\n", NOW)],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn odd_bodies_are_passed_through_and_never_cached() {
    let mock = MockUpstream::start().await;
    let cases: Vec<(&str, Reply)> = vec![
        (
            "html",
            Reply::json(200, "<html>oops</html>").header("content-type", "text/html"),
        ),
        (
            "badutf8",
            Reply {
                body: bytes::Bytes::from_static(b"{\"status\":{\"phase\":\"completed\xff\"}}"),
                ..Reply::json(200, "")
            },
        ),
        (
            "badjson",
            Reply::json(200, r#"{"status":{"phase":"completed""#),
        ),
        (
            "nophase",
            Reply::json(200, r#"{"id":"x","status":{"updatedAt":1}}"#),
        ),
        (
            "unknown",
            Reply::json(
                200,
                r#"{"id":"x","status":{"phase":"archived","updatedAt":1}}"#,
            ),
        ),
        (
            "notype",
            Reply {
                headers: vec![],
                ..Reply::json(200, r#"{"status":{"phase":"running","updatedAt":1}}"#)
            },
        ),
    ];
    for (id, reply) in &cases {
        mock.set(id, reply.clone());
    }
    // With redaction on (the default), a body that cannot be parsed cannot be scrubbed: 502
    // (SPEC "Answers"). The others are relayed (these compact ones re-serialise to their
    // own bytes), and none is cached.
    let unparsable = ["html", "badutf8", "badjson"];
    let redacting = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for (id, reply) in &cases {
        let got = c.get(redacting.public_addr(), &format!("/task/{id}")).await;
        assert_eq!(got.header("x-cache"), Some("PASS"), "{id}");
        if unparsable.contains(id) {
            assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{id}");
        } else {
            assert_eq!(got.status, StatusCode::OK, "{id}");
            assert_eq!(got.body, reply.body, "{id}: relayed as is");
        }
        assert!(
            redacting
                .proxy()
                .cache()
                .get(&common::task_key(id))
                .is_none(),
            "{id}"
        );
    }
    // With it off, every one is relayed as it came.
    let tg = taskgate(&mock, |c| c.redact = false).await;
    for (id, reply) in &cases {
        let got = c.get(tg.public_addr(), &format!("/task/{id}")).await;
        assert_eq!(got.status, StatusCode::OK, "{id}");
        assert_eq!(got.header("x-cache"), Some("PASS"), "{id}");
        assert_eq!(got.body, reply.body, "{id}: relayed as is");
        assert!(
            tg.proxy().cache().get(&common::task_key(id)).is_none(),
            "{id}"
        );
    }
    // A task body without a content type is still a task: JSON.
    mock.set(
        "notype",
        Reply {
            headers: vec![],
            ..Reply::task("notype", "completed")
        },
    );
    let got = c.get(tg.public_addr(), "/task/notype").await;
    assert_eq!(
        (got.header("x-cache"), got.header("content-type")),
        (Some("MISS"), Some("application/json"))
    );
}

#[tokio::test]
async fn error_statuses_are_never_cached_and_recovery_works() {
    let cases: Vec<(Reply, StatusCode)> = vec![
        (
            Reply::json(401, format!(r#"{{"errors":["no token {KEY} found"]}}"#)),
            StatusCode::BAD_GATEWAY,
        ),
        (
            Reply::json(403, r#"{"errors":["user is suspended"]}"#),
            StatusCode::FORBIDDEN,
        ),
        (
            Reply::json(500, r#"{"errors":["Internal server error: Error"]}"#),
            StatusCode::BAD_GATEWAY,
        ),
        (Reply::json(502, "bad gateway"), StatusCode::BAD_GATEWAY),
        (Reply::json(503, "unavailable"), StatusCode::BAD_GATEWAY),
        (
            Reply::json(301, "").header("location", "https://evil.example/"),
            StatusCode::BAD_GATEWAY,
        ),
    ];
    for (reply, want) in cases {
        let mock = MockUpstream::start().await;
        mock.set(ID, reply.clone());
        let tg = taskgate(&mock, |_| {}).await;
        let c = HttpClient::default();
        let got = c.get(tg.public_addr(), &format!("/task/{ID}")).await;
        assert_eq!(got.status, want, "upstream {}", reply.status);
        assert!(!got.text().contains(KEY) && !format!("{:?}", got.headers).contains(KEY));
        assert!(
            got.headers.get("location").is_none(),
            "a redirect is never relayed"
        );
        assert!(tg.proxy().cache().get(&common::task_key(ID)).is_none());
        mock.set(ID, Reply::task(ID, "completed"));
        assert_eq!(
            c.get(tg.public_addr(), &format!("/task/{ID}")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            mock.calls(),
            2,
            "upstream {}: one call for the fault, one after",
            reply.status
        );
    }
}

#[tokio::test]
async fn a_429_without_retry_after_backs_off_briefly() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::json(429, "{}"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let got = c.get(tg.public_addr(), &format!("/task/{ID}")).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(got.header("retry-after").is_none(), "none to keep");
    let during = c.get(tg.public_addr(), &format!("/task/{ID}")).await;
    assert_eq!(during.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        during.header("retry-after"),
        Some("2"),
        "the default back-off"
    );
    assert_eq!(mock.calls(), 1);
    mock.set(ID, Reply::task(ID, "completed"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        c.get(tg.public_addr(), &format!("/task/{ID}")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_upstream_down_at_start_then_up_is_served_once_up() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut cfg = common::config(&format!("http://127.0.0.1:{port}/api"));
    cfg.connect_timeout = Duration::from_millis(500);
    let tg = taskgate::start(cfg).await.unwrap();
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.public_addr(), &format!("/task/{ID}")).await.status,
        StatusCode::BAD_GATEWAY
    );
    // The API comes up on that port.
    let mock = MockUpstream::start_on(port).await;
    mock.set(ID, Reply::task(ID, "completed"));
    assert_eq!(
        c.get(tg.public_addr(), &format!("/task/{ID}")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn cached_answers_are_served_while_the_upstream_is_down() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "completed"));
    mock.set("busy", Reply::task("busy", "running"));
    let tg = taskgate(&mock, |c| c.connect_timeout = Duration::from_millis(500)).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), &format!("/task/{ID}")).await;
    drop(mock); // the API goes away
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hit = c.get(tg.public_addr(), &format!("/task/{ID}")).await;
    assert_eq!(
        (hit.status, hit.header("x-cache")),
        (StatusCode::OK, Some("HIT"))
    );
    let pass = c.get(tg.public_addr(), "/task/busy").await;
    assert_eq!(pass.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_client_leaving_mid_response_harms_no_one() {
    let mock = MockUpstream::start().await;
    let big = format!(
        r#"{{"status":{{"phase":"completed","updatedAt":1}},"pad":"{}"}}"#,
        "x".repeat(512 * 1024)
    );
    let len = big.len();
    mock.set(ID, Reply::json(200, big));
    let tg = taskgate(&mock, |_| {}).await;
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(tg.public_addr())
            .await
            .unwrap();
        s.write_all(format!("GET /task/{ID} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        drop(s); // gone after the first kilobyte
    }
    let got = HttpClient::default()
        .get(tg.public_addr(), &format!("/task/{ID}"))
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), len);
    assert_eq!(mock.calls(), 1);
}
