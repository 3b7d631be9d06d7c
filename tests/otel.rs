//! OpenTelemetry export (feature `otel`), end to end with the real binary: an in-process
//! OTLP/HTTP receiver gets the request spans, on shutdown, with the client's trace continued
//! and the upstream call parented on the exported span. A collector that hangs does not hold
//! the exit.
#![cfg(feature = "otel")]

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Binary, HttpClient, MockUpstream, Reply};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use taskgate::TraceContext;
use tokio::net::TcpListener;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One export as the receiver got it.
#[derive(Debug, Clone)]
struct Export {
    method: String,
    path: String,
    content_type: String,
    body: Bytes,
}

/// A minimal OTLP/HTTP collector: records every request and answers 200 with an empty
/// (valid) protobuf `ExportTraceServiceResponse`.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Export>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Export>>> = Arc::default();
        let log = Arc::clone(&got);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            log.lock().unwrap().push(Export {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                content_type: parts
                                    .headers
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned(),
                                body,
                            });
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, got, task }
    }

    fn exports(&self) -> Vec<Export> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn otel_env(collector: SocketAddr) -> [(&'static str, String); 2] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_SERVICE_NAME", "taskgate-test".into()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn request_spans_reach_an_otlp_receiver_with_the_trace_continued() {
    let receiver = Receiver::start().await;
    let mock = MockUpstream::start().await;
    mock.set("otel-done-7f3a", Reply::task("otel-done-7f3a", "completed"));
    mock.set(
        "otel-fresh-91c2",
        Reply::task("otel-fresh-91c2", "completed"),
    );
    let env = otel_env(receiver.addr);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proc = Binary::spawn(&mock.base_url(), &env);
    let c = HttpClient::default();
    let got = c
        .send(
            proc.public,
            "GET",
            "/task/otel-done-7f3a",
            &[("traceparent", CLIENT_PARENT)],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("x-cache"), Some("MISS"));
    // No client trace: the exported span starts one.
    let got = c.get(proc.public, "/task/otel-fresh-91c2").await;
    assert_eq!(got.status, StatusCode::OK);

    let (code, lines, stderr) = tokio::task::spawn_blocking(move || proc.terminate())
        .await
        .unwrap();
    assert_eq!(code, 0, "SIGTERM exits 0; stderr: {stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("exporting spans over OTLP/HTTP")),
        "the startup log names the export"
    );

    // The batch is flushed on shutdown, before the exit.
    let exports = receiver.exports();
    assert!(!exports.is_empty(), "no export arrived; stdout: {lines:#?}");
    for e in &exports {
        assert_eq!(e.method, "POST");
        assert_eq!(e.path, "/v1/traces");
        assert_eq!(e.content_type, "application/x-protobuf");
    }
    let body: Vec<u8> = exports.iter().flat_map(|e| e.body.to_vec()).collect();
    // Span name, resource, and the fields `proxy` records (keys and string values).
    for text in [
        "request",
        "taskgate-test",
        "task_id",
        "otel-done-7f3a",
        "cache",
        "MISS",
        "phase",
        "completed",
        "upstream_status",
        "status",
    ] {
        assert!(contains(&body, text.as_bytes()), "{text:?} not exported");
    }
    // OTLP protobuf carries ids as raw bytes.
    let client_trace = u128::from_str_radix(CLIENT_TRACE, 16)
        .unwrap()
        .to_be_bytes();
    assert!(contains(&body, &client_trace), "the client's trace id");

    // The upstream request is the exported span's child: same trace, parent-id = the span.
    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    let child = TraceContext::parse(seen[0].headers["traceparent"].as_bytes())
        .expect("a valid upstream traceparent");
    assert_eq!(child.trace_id_hex(), CLIENT_TRACE);
    assert_ne!(child.span_id, 0x00f0_67aa_0ba9_02b7, "taskgate's own span");
    assert!(
        contains(&body, &child.span_id.to_be_bytes()),
        "the upstream traceparent's parent-id is an exported span id"
    );
    let fresh = TraceContext::parse(seen[1].headers["traceparent"].as_bytes())
        .expect("a valid upstream traceparent");
    assert_ne!(fresh.trace_id_hex(), CLIENT_TRACE);
    assert!(contains(&body, &fresh.trace_id.to_be_bytes()), "new trace");
    assert!(contains(&body, &fresh.span_id.to_be_bytes()), "its span");

    // The access log names the same trace as the collector.
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "taskgate::access")
        .collect();
    assert_eq!(access[0]["trace_id"], CLIENT_TRACE);
    assert_eq!(access[1]["trace_id"], fresh.trace_id_hex());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_collector_does_not_hold_the_exit() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            conns.push(tcp);
        }
    });
    let mock = MockUpstream::start().await;
    mock.set("otel-stuck-1", Reply::task("otel-stuck-1", "completed"));
    let env = otel_env(collector);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let proc = Binary::spawn(&mock.base_url(), &env);
    let got = HttpClient::default()
        .get(proc.public, "/task/otel-stuck-1")
        .await;
    assert_eq!(got.status, StatusCode::OK);

    let started = Instant::now();
    let (code, lines, stderr) = tokio::task::spawn_blocking(move || proc.terminate())
        .await
        .unwrap();
    let took = started.elapsed();
    held.abort();
    assert_eq!(code, 0, "stderr: {stderr}");
    // The flush gives up after about 5 s (the export's own deadline is 10 s).
    assert!(took < Duration::from_secs(9), "exit took {took:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("span export did not finish")),
        "the lost flush is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_even_when_logs_are_quiet() {
    // The export has its own filter: TASKGATE_LOG governs the log lines only.
    let receiver = Receiver::start().await;
    let mock = MockUpstream::start().await;
    mock.set("otel-quiet-5", Reply::task("otel-quiet-5", "completed"));
    let env = otel_env(receiver.addr);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // `info` for the "listening" line the harness waits for, but not for the spans' target.
    env.push(("TASKGATE_LOG", "warn,taskgate::server=info"));
    let proc = Binary::spawn(&mock.base_url(), &env);
    let got = HttpClient::default()
        .get(proc.public, "/task/otel-quiet-5")
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let (code, lines, stderr) = tokio::task::spawn_blocking(move || proc.terminate())
        .await
        .unwrap();
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        !lines.iter().any(|l| l.contains("taskgate::access")),
        "access events are filtered out of the log"
    );
    let body: Vec<u8> = receiver
        .exports()
        .iter()
        .flat_map(|e| e.body.to_vec())
        .collect();
    assert!(contains(&body, b"otel-quiet-5"), "the span is exported");
}
