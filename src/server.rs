//! Listeners, connection limits and the shutdown sequence.
//!
//! Shutdown (SPEC "Shutdown"): readiness turns 503 at once; both listeners keep serving for
//! `TASKGATE_SHUTDOWN_GRACE` (so load balancers can notice); then they stop accepting,
//! in-flight requests get `TASKGATE_DRAIN_TIMEOUT` to finish, and `run` returns.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use hyper::{body::Incoming, service::service_fn, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{admin::Admin, answer::Body, config::Config, proxy::Proxy, upstream::SetupError};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The address a client on this host uses for a listener bound to `addr`: a wildcard
/// (`0.0.0.0`, `::`) is reached on the loopback address of its family.
pub fn local_address(mut addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// Why taskgate could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration could not be put to use (e.g. a CA file that holds no certificate).
    Setup(SetupError),
    /// A listener could not be bound.
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        error: io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Setup(e) => write!(f, "{e}"),
            StartError::Bind {
                listener,
                addr,
                error,
            } => {
                write!(f, "cannot listen on {addr} ({listener} listener): {error}")
            }
        }
    }
}

impl std::error::Error for StartError {}

/// A started taskgate: its bound addresses and the handle to stop it.
pub struct Running {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    proxy: Arc<Proxy>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Begins the shutdown sequence; `wait` returns once it is over.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Binds both listeners and serves until `shutdown` is called.
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    let proxy = Arc::new(Proxy::new(&cfg).map_err(StartError::Setup)?);
    proxy.start_background();
    let bind = |listener, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|error| StartError::Bind {
                listener,
                addr,
                error,
            })
    };
    let public = bind("public", cfg.listen).await?;
    let admin = bind("admin", cfg.admin_listen).await?;
    let public_addr = public.local_addr().map_err(|error| StartError::Bind {
        listener: "public",
        addr: cfg.listen,
        error,
    })?;
    let admin_addr = admin.local_addr().map_err(|error| StartError::Bind {
        listener: "admin",
        addr: cfg.admin_listen,
        error,
    })?;
    let ready = Arc::new(AtomicBool::new(true));
    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let (stop_accepting, stop_rx) = watch::channel(false);

    let limits = Limits::from(&cfg);
    let admin_state = Arc::new(Admin::new(Arc::clone(&proxy), Arc::clone(&ready)));
    let public_task = {
        let proxy = Arc::clone(&proxy);
        serve(public, limits, stop_rx.clone(), move |req, peer| {
            Arc::clone(&proxy).handle(req, peer)
        })
    };
    let admin_task = serve(admin, limits, stop_rx, move |req, _peer| {
        Arc::clone(&admin_state).handle(req)
    });

    let grace = cfg.shutdown_grace;
    let watchers_proxy = Arc::clone(&proxy);
    let task = tokio::spawn(async move {
        let _ = shutdown_rx.wait_for(|stop| *stop).await;
        ready.store(false, Ordering::SeqCst);
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutdown: readiness is now 503"
        );
        tokio::time::sleep(grace).await;
        let _ = stop_accepting.send(true);
        // Event streams never end by themselves: end them so the drain can finish.
        watchers_proxy.watchers().shutdown();
        let _ = tokio::join!(public_task, admin_task);
        tracing::info!("shutdown: drained");
    });
    tracing::info!(public = %public_addr, admin = %admin_addr, "listening");
    Ok(Running {
        public_addr,
        admin_addr,
        proxy,
        shutdown,
        task,
    })
}

/// Runs taskgate until `signal` resolves, then shuts down as SPEC says.
pub async fn run(cfg: Config, signal: impl Future<Output = ()>) -> Result<(), StartError> {
    let running = start(cfg).await?;
    signal.await;
    running.shutdown();
    running.wait().await;
    Ok(())
}

#[derive(Clone, Copy)]
struct Limits {
    max_connections: usize,
    /// Bounds both a slow request head and an idle keep-alive connection: hyper starts its
    /// header-read timer as soon as a connection waits for a request, so one timer does both
    /// jobs, set to the shorter of `TASKGATE_HEADER_TIMEOUT` and `TASKGATE_IDLE_TIMEOUT`.
    wait_for_request: Duration,
    drain_timeout: Duration,
}

impl From<&Config> for Limits {
    fn from(cfg: &Config) -> Self {
        Self {
            max_connections: cfg.max_connections,
            wait_for_request: cfg.header_timeout.min(cfg.idle_timeout),
            drain_timeout: cfg.drain_timeout,
        }
    }
}

fn serve<H, F>(
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
