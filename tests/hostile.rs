//! Hostile input: a table of malformed and malicious requests, each sent raw on its own
//! connection. Every one must get a 4xx (never a panic, a hang or a 5xx), taskgate must keep
//! serving, and the upstream must see nothing but `GET /api/task/{valid-id}`.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{raw, taskgate, HttpClient, MockUpstream, Reply};

const VALID: &str = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69";

/// A request line plus headers, with `Host` and `Connection: close` added.
fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: taskgate\r\nConnection: close\r\n\r\n").into_bytes()
}

fn with_headers(request_line: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{request_line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let long_id = "a".repeat(65);
    let huge_id = "b".repeat(10_000);
    let big_header = format!("X-Big: {}", "x".repeat(40 * 1024));
    let many_headers: Vec<String> = (0..150).map(|i| format!("X-H{i}: v")).collect();
    let mut many: Vec<&str> = vec!["Host: taskgate", "Connection: close"];
    many.extend(many_headers.iter().map(String::as_str));
    let valid = format!("/task/{VALID}");

    vec![
        // Dot segments, plain and encoded, in every position.
        ("dotdot as id", get("/task/..")),
        ("dot as id", get("/task/.")),
        ("dotdot then path", get("/task/../admin")),
        ("dotdot after id", get(&format!("/task/{VALID}/.."))),
        ("dotdot after api", get("/api/../task/x")),
        ("leading dotdot", get("/../task/x")),
        ("encoded dotdot", get("/task/%2e%2e")),
        ("encoded dotdot upper", get("/task/%2E%2E")),
        ("half encoded dotdot 1", get("/task/.%2e")),
        ("half encoded dotdot 2", get("/task/%2e.")),
        ("encoded dotdot after id", get(&format!("/task/{VALID}/%2e%2e"))),
        ("encoded dotdot then admin", get("/api/task/%2e%2e/admin")),
        ("double encoded dotdot", get("/task/%252e%252e")),
        ("dotdot inside events", get("/task/../events")),
        ("dotdot after events", get(&format!("/task/{VALID}/events/.."))),
        // Slashes and backslashes, encoded and double-encoded.
        ("encoded slash", get("/task/a%2Fb")),
        ("encoded slash lower", get("/task/a%2fb")),
        ("double encoded slash", get("/task/a%252Fb")),
        ("encoded slash traversal", get("/task/x%2f..%2fy")),
        ("encoded backslash", get("/task/a%5Cb")),
        ("double encoded backslash", get("/task/a%255Cb")),
        ("raw backslash", get("/task/a\\b")),
        ("backslash traversal", get("/task/..\\..\\etc")),
        ("empty id", get("/task/")),
        ("empty id segment", get("/task//x")),
        ("double slash prefix", get("//task/x")),
        ("api double slash", get("/api//task/x")),
        // Parameters, NUL and control bytes, non-ASCII.
        ("semicolon param", get("/task/a;b")),
        ("jsessionid param", get(&format!("/task/{VALID};jsessionid=1"))),
        ("semicolon segment", get("/task/;/x")),
        ("encoded NUL", get("/task/a%00")),
        ("encoded CRLF injection", get("/task/a%0d%0aX-Injected:%201")),
        ("raw NUL in path", b"GET /task/a\0b HTTP/1.1\r\nHost: taskgate\r\n\r\n".to_vec()),
        ("raw control byte", b"GET /task/a\x01b HTTP/1.1\r\nHost: taskgate\r\n\r\n".to_vec()),
        ("raw tab in path", b"GET /task/a\tb HTTP/1.1\r\nHost: taskgate\r\n\r\n".to_vec()),
        ("raw UTF-8", "GET /task/é HTTP/1.1\r\nHost: taskgate\r\n\r\n".as_bytes().to_vec()),
        ("fullwidth letter", "GET /task/ｘ HTTP/1.1\r\nHost: taskgate\r\n\r\n".as_bytes().to_vec()),
        ("encoded UTF-8", get("/task/%C3%A9")),
        ("encoded space", get("/api/task/x%20")),
        // Lengths.
        ("id one too long", get(&format!("/task/{long_id}"))),
        ("id of 10000 chars", get(&format!("/task/{huge_id}"))),
        ("oversized header", with_headers(&format!("GET {valid} HTTP/1.1"), &["Host: taskgate", &big_header])),
        ("150 headers", with_headers(&format!("GET {valid} HTTP/1.1"), &many)),
        // Request-target forms a forward proxy would take.
        ("absolute form, valid id", get(&format!("http://evil.example/task/{VALID}"))),
        ("absolute form, other path", get("http://evil.example/admin")),
        ("absolute form, https", get(&format!("https://livepeer.studio/api/task/{VALID}"))),
        ("authority form", with_headers("CONNECT evil.example:443 HTTP/1.1", &["Host: evil.example:443"])),
        ("CONNECT to task path", with_headers(&format!("CONNECT {valid} HTTP/1.1"), &["Host: taskgate"])),
        ("asterisk form", with_headers("OPTIONS * HTTP/1.1", &["Host: taskgate"])),
        // Host.
        ("missing Host", with_headers(&format!("GET {valid} HTTP/1.1"), &["Connection: close"])),
        ("duplicate Host", with_headers(&format!("GET {valid} HTTP/1.1"), &["Host: a", "Host: b"])),
        ("Host with userinfo", with_headers(&format!("GET {valid} HTTP/1.1"), &["Host: user@evil.example"])),
        ("Host with path", with_headers(&format!("GET {valid} HTTP/1.1"), &["Host: evil.example/x"])),
        ("empty Host", with_headers(&format!("GET {valid} HTTP/1.1"), &["Host: "])),
        // Bodies on GET, and framing tricks.
        ("GET with Content-Length", format!("GET {valid} HTTP/1.1\r\nHost: taskgate\r\nContent-Length: 5\r\n\r\nhello").into_bytes()),
        ("GET with chunked body", format!("GET {valid} HTTP/1.1\r\nHost: taskgate\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes()),
        ("HEAD with body", format!("HEAD {valid} HTTP/1.1\r\nHost: taskgate\r\nContent-Length: 3\r\n\r\nabc").into_bytes()),
        ("CL and TE together", format!("GET {valid} HTTP/1.1\r\nHost: taskgate\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes()),
        ("conflicting Content-Length", format!("GET {valid} HTTP/1.1\r\nHost: taskgate\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde").into_bytes()),
        ("negative Content-Length", format!("GET {valid} HTTP/1.1\r\nHost: taskgate\r\nContent-Length: -1\r\n\r\n").into_bytes()),
        ("unknown Transfer-Encoding", format!("GET {valid} HTTP/1.1\r\nHost: taskgate\r\nTransfer-Encoding: gzip\r\n\r\n").into_bytes()),
        ("smuggled request in body", format!("GET {valid} HTTP/1.1\r\nHost: taskgate\r\nContent-Length: 45\r\n\r\nGET /task/smuggled HTTP/1.1\r\nHost: taskgate\r\n\r\n").into_bytes()),
        // Upgrades and methods.
        ("websocket upgrade", with_headers(&format!("GET {valid} HTTP/1.1"), &["Host: taskgate", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])),
        ("h2c upgrade", with_headers(&format!("GET {valid} HTTP/1.1"), &["Host: taskgate", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__"])),
        ("TRACE", with_headers(&format!("TRACE {valid} HTTP/1.1"), &["Host: taskgate"])),
        ("DELETE", with_headers(&format!("DELETE {valid} HTTP/1.1"), &["Host: taskgate"])),
        ("PUT with body", format!("PUT {valid} HTTP/1.1\r\nHost: taskgate\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes()),
        ("lower-case method", with_headers(&format!("get {valid} HTTP/1.1"), &["Host: taskgate"])),
        ("unknown method", with_headers(&format!("FOO {valid} HTTP/1.1"), &["Host: taskgate"])),
        ("POST webhook without secret", b"POST /webhooks/livepeer HTTP/1.1\r\nHost: taskgate\r\nContent-Length: 2\r\n\r\n{}".to_vec()),
        // Broken syntax.
        ("extra space in request line", with_headers(&format!("GET  {valid} HTTP/1.1"), &["Host: taskgate"])),
        ("bad version", with_headers(&format!("GET {valid} HTTP/9.9"), &["Host: taskgate"])),
        ("header line folding", format!("GET {valid} HTTP/1.1\r\nHost: taskgate\r\nX-A: a\r\n b\r\n\r\n").into_bytes()),
        ("space in header name", with_headers(&format!("GET {valid} HTTP/1.1"), &["Host: taskgate", "Bad Header: x"])),
        ("NUL in header value", b"GET /task/abc HTTP/1.1\r\nHost: taskgate\r\nX-A: a\0b\r\n\r\n".to_vec()),
        ("TLS hello on plain port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec()),
        ("upper-case prefix", get("/TASK/x")),
        ("admin route on public", get("/metrics")),
        ("purge on public", with_headers("DELETE /cache/task/x HTTP/1.1", &["Host: taskgate"])),
    ]
}

/// Sends `request` on a fresh connection and reads the first response's head (or whatever
/// came before the server closed the connection or 5 s passed).
async fn first_response(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything (oversized heads).
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read_head).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `out`, if any.
fn status(out: &str) -> Option<u16> {
    out.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn serving(addr: SocketAddr) -> bool {
    HttpClient::default()
        .get(addr, &format!("/task/{VALID}"))
        .await
        .status
        == 200
}

fn assert_upstream_saw_only_valid_gets(mock: &MockUpstream) {
    for seen in mock.seen() {
        assert_eq!(seen.method, "GET");
        assert_eq!(
            seen.uri,
            format!("/api/task/{VALID}"),
            "the upstream saw {seen:?}"
        );
    }
}

#[tokio::test]
async fn every_hostile_request_gets_a_4xx_and_never_reaches_upstream() {
    let mock = MockUpstream::start().await;
    mock.set(VALID, Reply::task(VALID, "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    let addr = tg.public_addr();
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, request) in &cases {
        let out = first_response(addr, request).await;
        match status(&out) {
            Some(code) if (400..500).contains(&code) => {}
            other => failures.push(format!("{name}: got {other:?}: {:?}", out.lines().next())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        serving(addr).await,
        "taskgate still serves after the hostile suite"
    );
    assert_upstream_saw_only_valid_gets(&mock);
}

#[tokio::test]
async fn pipelined_requests_after_a_cache_hit_are_each_answered_in_order() {
    let mock = MockUpstream::start().await;
    mock.set(VALID, Reply::task(VALID, "completed"));
    let tg = taskgate(&mock, |_| {}).await;
    assert!(serving(tg.public_addr()).await); // warms the cache
    let request = format!(
        "GET /task/{VALID} HTTP/1.1\r\nHost: t\r\n\r\n\
         GET /task/%2e%2e HTTP/1.1\r\nHost: t\r\n\r\n\
         GET /api/task/{VALID} HTTP/1.1\r\nHost: t\r\n\r\n\
         DELETE /task/{VALID} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    let out = raw(tg.public_addr(), request.as_bytes(), Duration::from_secs(5)).await;
    let statuses: Vec<&str> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "400", "200", "405"], "{out}");
    assert_eq!(out.matches("x-cache: HIT").count(), 2);
    assert_eq!(mock.calls(), 1);
    assert_upstream_saw_only_valid_gets(&mock);
}

#[tokio::test]
async fn odd_but_harmless_requests_reach_upstream_only_as_the_canonical_get() {
    let mock = MockUpstream::start().await;
    mock.set(VALID, Reply::task(VALID, "running"));
    let tg = taskgate(&mock, |_| {}).await;
    for target in [
        format!("/task/{VALID}?../../admin"),
        format!("/api/task/{VALID}?projectId=x&url=http://evil.example"),
        format!("/task/{VALID}?%00"),
        // A fragment is not part of a request target; it is dropped by the URI parser.
        format!("/task/{VALID}#../../admin"),
    ] {
        let out = raw(tg.public_addr(), &get(&target), Duration::from_secs(5)).await;
        assert_eq!(status(&out), Some(200), "{target}: {out}");
    }
    let out = raw(
        tg.public_addr(),
        format!("GET /task/{VALID} HTTP/1.1\r\nHost: taskgate\r\nConnection: close\r\nAuthorization: Bearer stolen\r\nCookie: a=b\r\nX-Forwarded-Host: evil.example\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status(&out), Some(200));
    assert_eq!(mock.calls(), 5);
    assert_upstream_saw_only_valid_gets(&mock);
    for seen in mock.seen() {
        assert_eq!(
            seen.headers["authorization"],
            format!("Bearer {}", common::KEY).as_str()
        );
        assert!(
            seen.headers.get("cookie").is_none() && seen.headers.get("x-forwarded-host").is_none()
        );
    }
}
