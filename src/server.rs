//! Listeners, connection limits and the shutdown sequence.
//!
//! Shutdown (docs/operating.md): readiness turns 503 at once; both listeners keep serving for
//! `TASKGATE_SHUTDOWN_GRACE` (so load balancers can notice); then they stop accepting,
//! in-flight requests get `TASKGATE_DRAIN_TIMEOUT` to finish, and `run` returns.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    admin::{self, Admin},
    config::Config,
    listener::{self, Limits},
    proxy::Proxy,
    upstream::SetupError,
    workers::{self, Workers},
};

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

    /// Re-reads every `*_FILE` secret now (what SIGHUP does).
    pub fn reload_secrets(&self) {
        self.proxy.secrets().reload_all();
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
    // The admin listener, the shutdown sequence and the background tasks stay on the caller's
    // runtime; public connections run on the workers, which stop once they are drained.
    let workers = Workers::start(workers::count())
        .map_err(|e| StartError::Setup(SetupError(format!("cannot start the workers: {e}"))))?;
    let workers = Arc::new(workers);
    let ready = Arc::new(AtomicBool::new(true));
    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let (stop_accepting, stop_rx) = watch::channel(false);

    let limits = Limits::new(
        cfg.max_connections,
        cfg.header_timeout,
        cfg.idle_timeout,
        cfg.drain_timeout,
    )
    .per_client(cfg.max_connections_per_client);
    let admin_state = Arc::new(Admin::new(
        Arc::clone(&proxy),
        Arc::clone(&ready),
        cfg.cache_max_bytes,
    ));
    let public_task = {
        let proxy = Arc::clone(&proxy);
        listener::serve(
            public,
            limits,
            stop_rx.clone(),
            Some(workers),
            move |req, ends| Arc::clone(&proxy).handle(req, ends.peer),
        )
    };
    let admin_limits = Limits {
        max_connections: admin::MAX_CONNECTIONS,
        wait_for_request: limits.wait_for_request.min(admin::WAIT_FOR_REQUEST),
        ..limits
    }
    .per_client(admin::MAX_CONNECTIONS_PER_CLIENT);
    let admin_task = listener::serve(admin, admin_limits, stop_rx, None, move |req, ends| {
        Arc::clone(&admin_state).handle(req, ends)
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

/// Runs taskgate until `signal` resolves, then shuts down as the module doc says.
pub async fn run(cfg: Config, signal: impl Future<Output = ()>) -> Result<(), StartError> {
    let running = start(cfg).await?;
    signal.await;
    running.shutdown();
    running.wait().await;
    Ok(())
}
