//! Limits on what a client can hold: slow request heads, idle keep-alive connections, and the
//! number of open connections.

mod common;

use std::time::{Duration, Instant};

use common::{taskgate, MockUpstream, Reply};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Reads until the peer closes (Ok(0) or an error); returns how long that took.
async fn time_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |c| c.header_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(tg.public_addr()).await.unwrap();
    s.write_all(b"GET /task/abc HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let closed = time_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the slowloris connection was not closed");
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(tg.public_addr()).await.unwrap();
    s.write_all(b"GET /task/t1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive after the answer, then closed once idle.
    let closed = time_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|d| d >= Duration::from_millis(200)),
        "{closed:?}"
    );
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |c| c.max_connections = 2).await;
    let addr = tg.public_addr();
    let request = b"GET /task/t1 HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 8192];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        held.push(s); // kept open, idle
    }
    // The third connection is taken by the kernel but not served while two are open.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let early = tokio::time::timeout(Duration::from_millis(400), third.read(&mut buf)).await;
    assert!(early.is_err(), "served past the connection limit");
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
