//! The per-core workers (src/workers.rs) under a hostile or unlucky client: connection
//! bookkeeping under true parallelism (the accept loop and the connections on different
//! threads), coalescing across workers, the drain and the workers' end, an upstream pool per
//! worker, timers on the workers.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{taskgate, HttpClient, MockUpstream, Reply, SseReader};
use http::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The tests of this file run one at a time: some count the process's worker threads.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(10);

/// Threads of this process named after the workers (`taskgate-worker-N`; the kernel keeps 15
/// characters of a name).
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("taskgate-worke"))
        .count()
}

/// Asserts that no worker thread is (or soon will be) left in the process.
async fn assert_no_worker_threads(what: &str) {
    assert!(
        worker_threads_become(0).await,
        "{what}: {} worker threads",
        worker_threads()
    );
}

async fn worker_threads_become(n: usize) -> bool {
    for _ in 0..100 {
        if worker_threads() == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One request on a fresh connection the server closes after answering; everything read
/// until EOF (or a reset), or `None` if the server neither answered nor closed in time.
async fn get_close(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return Some(String::new());
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// A keep-alive connection that has had one answer (so it is open and counted).
async fn held_connection(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s
}

/// Reads until the peer closes; true if it did within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let text = HttpClient::default().get(admin, "/metrics").await.text();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---- per-client and global connection bookkeeping ----------------------------------------

/// Two loops from 127.0.0.1 of 300 requests each, one connection at a time, each closed by
/// the server after its answer (`Connection: close`); what was not answered 200.
async fn refused_in_sequential_loops(max_per_client: usize) -> Vec<(usize, String)> {
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |c| {
        c.max_connections = 64;
        c.max_connections_per_client = max_per_client;
    })
    .await;
    let addr = tg.public_addr();
    let loops: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                let mut refused = Vec::new();
                for i in 0..300 {
                    let got = get_close(addr, "/task/t1").await.expect("no hang");
                    if !got.starts_with("HTTP/1.1 200") {
                        refused.push((i, got));
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = Vec::new();
    for l in loops {
        refused.extend(l.await.unwrap());
    }
    refused
}

/// A client that uses one connection at a time, each closed by the server, must never be
/// refused as over its cap (2): the server told it the connection is over (FIN) before it
/// opens the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_connections_closed_by_the_server_are_never_over_the_cap() {
    let _serial = SERIAL.lock().await;
    let refused = refused_in_sequential_loops(2).await;
    assert!(
        refused.is_empty(),
        "{} of 600 sequential connections refused, e.g. {:?}",
        refused.len(),
        refused.first()
    );
}

/// Control for the test above: the same loops with a per-client cap far above what they use
/// are never refused, so any refusal above is the per-client count, not something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_sequential_connections_with_a_roomy_cap_are_all_served() {
    let _serial = SERIAL.lock().await;
    assert_eq!(refused_in_sequential_loops(64).await, []);
}

/// The same with the idle timeout closing the connection: the client waits for the server to
/// close its only connection, then opens the next at once (cap 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_on_idle_frees_the_clients_place_before_the_client_sees_it() {
    let _serial = SERIAL.lock().await;
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |c| {
        c.max_connections = 64;
        c.max_connections_per_client = 1;
        c.idle_timeout = Duration::from_millis(30);
    })
    .await;
    let addr = tg.public_addr();
    let mut refused = 0;
    for _ in 0..80 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /task/t1 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(WAIT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("closed on idle");
        if !out.starts_with(b"HTTP/1.1 200") {
            refused += 1;
        }
    }
    assert_eq!(refused, 0, "connections refused after an idle close");
}

/// A burst far past the connection limit, with the per-client cap equal to it: the extra
/// connections wait in the backlog and are all served in the end; none is refused (the
/// per-client count must never lag the global one), none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_limit_is_served_in_full_when_the_caps_are_equal() {
    let _serial = SERIAL.lock().await;
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |c| {
        c.max_connections = 4;
        c.max_connections_per_client = 4;
    })
    .await;
    let addr = tg.public_addr();
    let all: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { get_close(addr, "/task/t1").await }))
        .collect();
    let mut bad = Vec::new();
    for (i, c) in all.into_iter().enumerate() {
        match c.await.unwrap() {
            Some(got) if got.starts_with("HTTP/1.1 200") => {}
            other => bad.push((i, other)),
        }
    }
    assert!(
        bad.is_empty(),
        "{} of 200 not served: {:?}",
        bad.len(),
        bad.first()
    );
}

/// Many open/close cycles of every kind (answered, aborted mid-head, aborted while the
/// upstream is slow, silent) from many tasks at once leave no connection slot behind: the
/// limit still admits exactly `max_connections` held connections afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_connection_slot_behind() {
    let _serial = SERIAL.lock().await;
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    mock.set(
        "slow",
        Reply::task("slow", "running").delay(Duration::from_millis(200)),
    );
    let tg = taskgate(&mock, |c| {
        c.max_connections = 6;
        c.max_connections_per_client = 6;
    })
    .await;
    let addr = tg.public_addr();
    let tasks: Vec<_> = (0..32)
        .map(|n| {
            tokio::spawn(async move {
                for i in 0..15 {
                    let Ok(mut s) = TcpStream::connect(addr).await else {
                        continue;
                    };
                    match (n + i) % 4 {
                        0 => {
                            let _ = s
                                .write_all(b"GET /task/t1 HTTP/1.1\r\nHost: t\r\n\r\n")
                                .await;
                            let mut buf = [0u8; 1024];
                            let _ = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
                        }
                        1 => {
                            let _ = s.write_all(b"GET /task/t1 HTTP/1.1\r\nHo").await;
                        }
                        2 => {
                            let _ = s
                                .write_all(b"GET /task/slow HTTP/1.1\r\nHost: t\r\n\r\n")
                                .await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => {
                            // RST on close; a zero linger does not block the thread.
                            #[allow(deprecated)]
                            let _ = s.set_linger(Some(Duration::ZERO));
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("the churn finishes")
            .unwrap();
    }
    // Everything above has ended (or will, within the header timeout / the slow fetch).
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(
            tokio::time::timeout(WAIT, held_connection(addr, "/task/t1"))
                .await
                .expect("a slot leaked: the limit no longer admits max_connections"),
        );
    }
    // And not one more (a slot counted twice would let a seventh in).
    let mut seventh = TcpStream::connect(addr).await.unwrap();
    seventh
        .write_all(b"GET /task/t1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), seventh.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "served past the connection limit: {early:?} {:?}",
        String::from_utf8_lossy(&buf)
    );
    drop(held.pop());
    let n = tokio::time::timeout(WAIT, seventh.read(&mut buf))
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

// ---- coalescing across workers ---------------------------------------------------------------

/// taskgate in front of an API that answers `id`, completed, after `delay`.
async fn slow_completed(id: &str, delay: Duration) -> (MockUpstream, taskgate::Running) {
    let mock = MockUpstream::start().await;
    mock.set(id, Reply::task(id, "completed").delay(delay));
    let tg = taskgate(&mock, |_| {}).await;
    (mock, tg)
}

/// Requests for one id on many connections (so on every worker) share one upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_on_many_connections_is_one_upstream_call() {
    let _serial = SERIAL.lock().await;
    let (mock, tg) = slow_completed("c1", Duration::from_millis(500)).await;
    let addr = tg.public_addr();
    let all: Vec<_> = (0..24)
        .map(|_| tokio::spawn(async move { get_close(addr, "/task/c1").await }))
        .collect();
    for c in all {
        let got = c.await.unwrap().expect("answered");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    assert_eq!(mock.calls(), 1, "one upstream call for all of them");
}

/// The request leading a fetch hangs up mid-fetch; the requests waiting on it (on other
/// connections, so other workers) still get the answer, from that one call, and it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_hanging_up_leaves_its_waiters_on_other_workers_answered() {
    let _serial = SERIAL.lock().await;
    let (mock, tg) = slow_completed("h1", Duration::from_millis(800)).await;
    let addr = tg.public_addr();
    let mut leader = TcpStream::connect(addr).await.unwrap();
    leader
        .write_all(b"GET /task/h1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    while mock.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiters: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get_close(addr, "/task/h1").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(leader);
    for w in waiters {
        let got = w.await.unwrap().expect("a waiter was answered");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    assert_eq!(mock.calls(), 1);
    let again = get_close(addr, "/task/h1").await.unwrap();
    assert!(again.contains("x-cache: HIT"), "{again}");
    assert_eq!(
        metric(tg.admin_addr(), "taskgate_upstream_in_flight").await,
        0.0
    );
}

// ---- timers on the workers ---------------------------------------------------------------

/// The header timeout and the idle timeout close connections on every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_idle_timeouts_fire_on_every_worker() {
    let _serial = SERIAL.lock().await;
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    let tg = taskgate(&mock, |c| {
        c.header_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = tg.public_addr();
    let mut slow = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /task/t1 HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
        idle.push(held_connection(addr, "/task/t1").await);
    }
    for s in slow.iter_mut().chain(idle.iter_mut()) {
        assert!(
            closed_within(s, WAIT).await,
            "a connection was never closed"
        );
    }
}

// ---- shutdown, the drain and the workers' end --------------------------------------------

/// Idle keep-alive connections and event streams on every worker end at shutdown without
/// waiting for the drain timeout; a request in flight is answered; the workers' threads end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_worker_and_ends_their_threads() {
    let _serial = SERIAL.lock().await;
    assert_no_worker_threads("left by an earlier test").await;
    let mock = MockUpstream::start().await;
    mock.set("t1", Reply::task("t1", "completed"));
    mock.set(
        "slow",
        Reply::task("slow", "completed").delay(Duration::from_millis(700)),
    );
    mock.set("w1", Reply::task("w1", "running"));
    let tg = taskgate(&mock, |c| {
        c.shutdown_grace = Duration::ZERO;
        c.drain_timeout = Duration::from_secs(60);
    })
    .await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(worker_threads_become(cores).await);
    let addr = tg.public_addr();
    let mut idle = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..4 {
        idle.push(held_connection(addr, "/task/t1").await);
        let mut s = SseReader::open(addr, "/task/w1/events", &[]).await;
        assert_eq!(s.status, StatusCode::OK);
        assert!(s.next(WAIT).await.is_some());
        streams.push(s);
    }
    let in_flight = tokio::spawn(async move { get_close(addr, "/task/slow").await });
    while !mock.seen().iter().any(|s| s.uri.ends_with("/slow")) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tg.shutdown();
    tokio::time::timeout(WAIT, tg.wait())
        .await
        .expect("the drain waited on something that should have ended");
    let got = in_flight.await.unwrap().expect("answered");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    for s in &mut idle {
        assert!(closed_within(s, WAIT).await);
    }
    for s in &mut streams {
        assert!(s.ended(WAIT).await);
    }
    assert_no_worker_threads("left behind").await;
}

/// Past the drain timeout, what is left is closed: the client is not left hanging on a
/// connection nobody serves, and the workers' threads end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_closes_what_is_left_on_the_workers() {
    let _serial = SERIAL.lock().await;
    assert_no_worker_threads("left by an earlier test").await;
    let mock = MockUpstream::start().await;
    mock.set(
        "stuck",
        Reply::task("stuck", "completed").delay(Duration::from_secs(120)),
    );
    let tg = taskgate(&mock, |c| {
        c.shutdown_grace = Duration::ZERO;
        c.drain_timeout = Duration::from_millis(300);
        c.upstream_timeout = Duration::from_secs(120);
    })
    .await;
    let addr = tg.public_addr();
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /task/stuck HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        stuck.push(s);
    }
    while mock.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tg.shutdown();
    tokio::time::timeout(WAIT, tg.wait())
        .await
        .expect("shutdown returns after the drain timeout");
    for s in &mut stuck {
        assert!(
            closed_within(s, WAIT).await,
            "a connection outlived the drain"
        );
    }
    assert!(TcpStream::connect(addr).await.is_err());
    assert_no_worker_threads("left behind").await;
}

/// A `Running` dropped without a shutdown, then its runtime: the workers' threads end with
/// it (what an embedding or a test that just returns does).
#[test]
fn dropping_running_and_its_runtime_ends_the_worker_threads() {
    let _serial = SERIAL.blocking_lock();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mock, open) = rt.block_on(async {
        assert_no_worker_threads("left by an earlier test").await;
        let mock = MockUpstream::start().await;
        mock.set("t1", Reply::task("t1", "completed"));
        let tg = taskgate(&mock, |_| {}).await;
        // A connection left open on a worker, and a request through it.
        let open = held_connection(tg.public_addr(), "/task/t1").await;
        drop(tg);
        (mock, open.into_std().unwrap())
    });
    drop(rt);
    let check = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    check.block_on(async {
        assert_no_worker_threads("left behind").await;
        let mut open = TcpStream::from_std(open).unwrap();
        assert!(closed_within(&mut open, WAIT).await);
    });
    drop(mock);
}

// ---- upstream connection pools per worker ------------------------------------------------

/// The upstream closes its kept-alive connections (every worker's pool holds one): the next
/// requests on every worker still reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_closing_pooled_connections_is_survived_on_every_worker() {
    let _serial = SERIAL.lock().await;
    let mock = MockUpstream::start().await;
    mock.set("p1", Reply::task("p1", "running"));
    let tg = taskgate(&mock, |_| {}).await;
    let addr = tg.public_addr();
    let c = HttpClient::default();
    for _ in 0..8 {
        let got = get_close(addr, "/task/p1").await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    let calls = mock.calls();
    mock.goaway();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..8 {
        let got = get_close(addr, "/task/p1").await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    assert_eq!(mock.calls(), calls + 8);
    // The API going away and coming back on the same port.
    let port = mock.addr().port();
    drop(mock);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mock = MockUpstream::start_on(port).await;
    mock.set("p1", Reply::task("p1", "running"));
    for _ in 0..8 {
        let got = c.get(addr, "/task/p1").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    }
}

// ---- event streams on the workers --------------------------------------------------------

/// A client holding its whole allowance of event streams (spread over the workers) hangs
/// up on all of them: its allowance comes back, and the open-stream gauge returns to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_dropped_on_every_worker_give_back_the_clients_allowance() {
    let _serial = SERIAL.lock().await;
    let mock = MockUpstream::start().await;
    mock.set("w1", Reply::task("w1", "running"));
    mock.set("w2", Reply::task("w2", "running"));
    let tg = taskgate(&mock, |c| c.watch_max_per_client = 6).await;
    let addr = tg.public_addr();
    for round in 0..3 {
        let mut streams = Vec::new();
        for i in 0..6 {
            let path = if i % 2 == 0 {
                "/task/w1/events"
            } else {
                "/task/w2/events"
            };
            let mut opened = None;
            // The previous round's streams end once their workers see the hang-up.
            for _ in 0..100 {
                let s = SseReader::open(addr, path, &[]).await;
                if s.status == StatusCode::OK {
                    opened = Some(s);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut s = opened.unwrap_or_else(|| panic!("round {round}: stream {i} refused"));
            assert!(s.next(WAIT).await.is_some());
            streams.push(s);
        }
        let refused = SseReader::open(addr, "/task/w1/events", &[]).await;
        assert_ne!(refused.status, StatusCode::OK, "a seventh stream");
        drop(refused);
        drop(streams);
    }
    let mut gauge = -1.0;
    for _ in 0..100 {
        gauge = metric(tg.admin_addr(), "taskgate_watch_streams").await;
        if gauge == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gauge, 0.0, "streams still counted");
}
