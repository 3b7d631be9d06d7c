//! Accepting connections: the one accept loop behind every listener (public, admin, and the
//! demo's simulated API), with its connection caps, request-head limits and drain.
//!
//! Guarantees:
//! - Every connection makes progress or is closed: from the moment it is accepted, a client
//!   has `min(HEADER_TIMEOUT, IDLE_TIMEOUT)` to send a whole request head, and the same again
//!   after each answer. A socket that sends nothing, half a head, or an HTTP/2 preface is
//!   closed on that timer like any other.
//! - Every answer makes progress or the connection is closed: a write that cannot go on for
//!   `IDLE_TIMEOUT` (a client that pipelined requests and stopped reading, so the socket's
//!   buffers are full) ends the connection. hyper has no write timer of its own, and its
//!   header timer does not run while it waits to write.
//! - The listeners speak HTTP/1.1 (and 1.0) only. Browsers reach taskgate over HTTP/1.1 (or
//!   through a TLS-terminating proxy that speaks HTTP/1.1 to it); cleartext HTTP/2 (h2c) is
//!   undocumented, no browser uses it, and it would need its own idle and ping timers, so it is
//!   not offered: an h2c preface is an unreadable request and the connection is closed.
//! - At most `max_connections` are open at once (past it, new clients wait in the kernel's
//!   backlog), and at most `max_per_client` from one client address (an IPv6 client counted by
//!   its /64); one past that is closed at once.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
    time::Sleep,
};

use crate::{answer::respond::Body, limit::client_key, sync::lock, workers::Workers};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The address a client on this host uses for a listener bound to `addr`: a wildcard
/// (`0.0.0.0`, `::`) is reached on the loopback address of its family.
pub fn local_address(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

#[derive(Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Most connections one client address may hold open.
    pub max_per_client: usize,
    /// Bounds both a slow request head and an idle keep-alive connection: hyper starts its
    /// header-read timer as soon as a connection waits for a request, so one timer does both
    /// jobs, set to the shorter of `TASKGATE_HEADER_TIMEOUT` and `TASKGATE_IDLE_TIMEOUT`.
    pub wait_for_request: Duration,
    /// Longest a write may wait for the client to read (`TASKGATE_IDLE_TIMEOUT`).
    pub write_stall: Duration,
    pub drain_timeout: Duration,
}

impl Limits {
    pub fn new(
        max_connections: usize,
        header_timeout: Duration,
        idle_timeout: Duration,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            max_connections,
            max_per_client: max_connections,
            wait_for_request: header_timeout.min(idle_timeout),
            write_stall: idle_timeout,
            drain_timeout,
        }
    }

    /// With a per-client cap (`TASKGATE_MAX_CONNECTIONS_PER_CLIENT`).
    pub fn per_client(mut self, max: usize) -> Self {
        self.max_per_client = max.max(1);
        self
    }
}

/// Open connections per client key.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

impl PerClient {
    /// Counts one more connection from `client`, unless it already holds `max`.
    fn enter(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = lock(&self.0);
        let n = open.entry(client).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: Arc::clone(self),
            client,
        })
    }
}

/// What an open connection holds: its client's count, then its place under the connection
/// cap (dropped in that order: the permit wakes the accept loop, on another thread, which
/// must not find this client still at its cap). Held by the socket's wrapper and released
/// when the socket is shut down or dropped, before the client can see the close: released
/// after the connection's future ends, a client that reconnects at once could be refused.
struct Admission {
    _client: ClientSlot,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// One counted connection; dropping it uncounts it.
struct ClientSlot {
    table: Arc<PerClient>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.table.0);
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's answer as the `Ok` a hyper service gives. Not an `async` block awaiting
    /// the handler's future: that block would hold the future twice (as captured and as
    /// awaited), and hyper keeps and moves it once per request.
    struct NeverFails<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for NeverFails<F> {
    type Output = Result<F::Output, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}

/// Both ends of a client's connection.
#[derive(Debug, Clone, Copy)]
pub struct Ends {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client reached: the listener's own (its interface's, when it listens
    /// on an unspecified address).
    pub local: SocketAddr,
}

/// Serves connections from `listener` with `handler` until `stop` turns true, then drains.
/// Each connection runs on the next of `workers`, or on the caller's runtime without them.
pub fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    workers: Option<Arc<Workers>>,
    handler: H,
) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>, Ends) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Armed from the first read of each request head, the very first one included.
            .header_read_timeout(limits.wait_for_request)
            // Request heads past this get 431, as with nginx's default 4 × 8 KiB buffers.
            .max_buf_size(MAX_HEADER_BYTES);
        let graceful = GracefulShutdown::new();
        let bound = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let per_client = Arc::new(PerClient::default());
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
        loop {
            // Wait for a free connection slot before accepting: past the limit, new clients
            // queue in the kernel's backlog instead of costing memory here.
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
                _ = stop.wait_for(|s| *s) => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|s| *s) => break,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // EMFILE and friends: back off briefly rather than spin or exit.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(client_slot) = per_client.enter(client_key(peer.ip()), limits.max_per_client)
            else {
                tracing::debug!(peer = %peer.ip(), "per-client connection cap reached; closing");
                continue; // dropping the stream closes it
            };
            let _ = stream.set_nodelay(true);
            let ends = Ends {
                peer,
                local: stream.local_addr().unwrap_or(bound),
            };
            let handler = handler.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let run = move |stream: TcpStream| async move {
                let svc = service_fn(move |req| NeverFails {
                    inner: handler(req, ends),
                });
                let admission = Admission {
                    _client: client_slot,
                    _permit: permit,
                };
                let io = WriteStall::new(stream, limits.write_stall).admitted(admission);
                let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), svc));
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            };
            match &workers {
                // Moved to the worker's own reactor, so that its readiness events wake that
                // thread and no other.
                Some(workers) => match stream.into_std() {
                    Ok(stream) => drop(workers.spawn(async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => run(stream).await,
                            Err(error) => tracing::warn!(%error, "cannot hand a connection over"),
                        }
                    })),
                    Err(error) => tracing::warn!(%error, "cannot hand a connection over"),
                },
                None => drop(tokio::spawn(run(stream))),
            }
        }
        drop(listener);
        if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
    })
}

/// A connection whose writes must make progress within `limit`: the timer starts when a
/// write (or flush) finds the socket full and is reset by any progress. Reads pass through.
struct WriteStall<S> {
    /// Before `io`, so that it is released before the socket is closed.
    admission: Option<Admission>,
    io: S,
    limit: Duration,
    /// Armed while a write waits; allocated only then (never on a client that reads).
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteStall<S> {
    fn new(io: S, limit: Duration) -> Self {
        Self {
            admission: None,
            io,
            limit,
            stalled: None,
        }
    }

    fn admitted(mut self, admission: Admission) -> Self {
        self.admission = Some(admission);
        self
    }

    /// After the socket said "not now": pending until the limit, then the error that ends the
    /// connection. The timer's waker is registered too, so the task wakes for either.
    fn wait<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.wait(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.admission = None; // the client may see the close from now on
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_reads_fails_after_the_limit() {
        let (io, _client) = tokio::io::duplex(64);
        let mut conn = WriteStall::new(io, Duration::from_secs(5));
        conn.write_all(&[b'x'; 64]).await.unwrap(); // the pipe is full now
        let start = tokio::time::Instant::now();
        let err = conn.write_all(b"y").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        let (io, mut client) = tokio::io::duplex(8);
        let mut conn = WriteStall::new(io, Duration::from_secs(5));
        // One byte every 3 s: each write waits less than the limit, all of them far more.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while client.read_exact(&mut byte).await.is_ok() {
                got.push(byte[0]);
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            got
        });
        let start = tokio::time::Instant::now();
        conn.write_all(&[b'z'; 16]).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(20));
        drop(conn);
        assert_eq!(reader.await.unwrap(), vec![b'z'; 16]);
    }

    /// The admin listener's `Host` rule takes the address the client reached from here: the
    /// connection's own end, not the unspecified address listened on, nor the client's.
    #[tokio::test]
    async fn a_handler_sees_both_ends_of_its_connection() {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop_tx, stop) = watch::channel(false);
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let limits = Limits::new(
            8,
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_millis(100),
        );
        let task = serve(listener, limits, stop, None, move |_req, ends| {
            let _ = seen_tx.send(ends);
            async { hyper::Response::new(crate::answer::respond::full("")) }
        });
        let client = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let from = client.local_addr().unwrap();
        drop(client);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(from).unwrap();
        let mut tcp = socket
            .connect(SocketAddr::from(([127, 0, 0, 2], port)))
            .await
            .unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let ends = seen.recv().await.unwrap();
        assert_eq!(ends.local, SocketAddr::from(([127, 0, 0, 2], port)));
        assert_eq!(ends.peer, from);
        let _ = stop_tx.send(true);
        drop(tcp);
        task.await.unwrap();
    }
}
