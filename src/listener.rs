//! Accepting connections: the one accept loop behind every listener (public, admin, and the
//! demo's simulated API), with its connection cap, request-head limits and drain.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{body::Incoming, service::service_fn, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::answer::respond::Body;

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
    /// Bounds both a slow request head and an idle keep-alive connection: hyper starts its
    /// header-read timer as soon as a connection waits for a request, so one timer does both
    /// jobs, set to the shorter of `TASKGATE_HEADER_TIMEOUT` and `TASKGATE_IDLE_TIMEOUT`.
    pub wait_for_request: Duration,
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
            wait_for_request: header_timeout.min(idle_timeout),
            drain_timeout,
        }
    }
}

/// Serves connections from `listener` with `handler` until `stop` turns true, then drains.
pub fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    handler: H,
) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.wait_for_request)
            // Request heads past this get 431, as with nginx's default 4 × 8 KiB buffers.
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        let graceful = GracefulShutdown::new();
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
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let svc = service_fn(move |req| {
                let fut = handler(req, peer);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
                drop(permit);
            });
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
