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
    let tg = taskgate(&mock, |c| {
        c.max_connections = 2;
        c.max_connections_per_client = 2;
    })
    .await;
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

#[tokio::test]
async fn a_socket_that_sends_nothing_is_closed_on_both_listeners() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |c| c.header_timeout = Duration::from_millis(300)).await;
    for addr in [tg.public_addr(), tg.admin_addr()] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let closed = time_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "a silent socket on {addr} was never closed"
        );
    }
}

#[tokio::test]
async fn an_h2c_preface_is_not_a_way_around_the_timers() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |c| c.header_timeout = Duration::from_millis(300)).await;
    // A partial preface stays silent after its first bytes.
    let mut partial = TcpStream::connect(tg.public_addr()).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let closed = time_until_closed(&mut partial, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "a partial h2 preface kept its socket");
    // A whole prior-knowledge preface gets no HTTP/2 session (the port speaks HTTP/1.1 only).
    let mut whole = TcpStream::connect(tg.public_addr()).await.unwrap();
    whole
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let closed = time_until_closed(&mut whole, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an h2c connection stayed open");
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    // 8 connections in all, 2 per client: from 127.0.0.1 only two stay open.
    let tg = taskgate(&mock, |c| {
        c.max_connections = 8;
        c.max_connections_per_client = 2;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(tg.public_addr()).await.unwrap();
        s.write_all(b"GET /task/t1 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = TcpStream::connect(tg.public_addr()).await.unwrap();
    let _ = third
        .write_all(b"GET /task/t1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("the third connection is closed at once, not left waiting");
    assert!(
        matches!(got, Ok(0) | Err(_)),
        "the third connection was served"
    );
    // Once one is given back, the client may open another.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(tg.public_addr()).await.unwrap();
    fourth
        .write_all(b"GET /task/t1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let n = fourth.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

/// Review finding: a client that pipelines many requests and never reads the answers fills
/// the socket's buffers; hyper then waits to write, forever, holding the connection. The write
/// stall limit (`TASKGATE_IDLE_TIMEOUT`) closes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_its_answers_is_cut_off() {
    const REQUESTS: usize = 40_000;
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |c| {
        c.idle_timeout = Duration::from_millis(500);
        c.rate_limit = 0.0; // every answer is a 200 hit, not a 429
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let s = socket.connect(tg.public_addr()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Far more answers than the socket buffers hold (megabytes), written without reading.
    let writer = tokio::spawn(async move {
        let request = b"GET /task/t1 HTTP/1.1\r\nHost: t\r\n\r\n";
        for _ in 0..REQUESTS {
            if wr.write_all(request).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        // Keep the write half open: the server must end it, not the client.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Now read what was sent: with the connection cut, the answers stop short of REQUESTS
    // and the stream ends (at EOF, or a reset: the server closed with requests unread); a
    // server still waiting to write would send every one.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    writer.abort();
    let answered = String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200")
        .count();
    assert!(
        read.is_ok(),
        "the connection was never closed ({answered} answers read)"
    );
    assert!(answered < REQUESTS, "all {REQUESTS} answered");
}
