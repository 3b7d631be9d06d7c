//! `taskgate`: read config → init logs (and span export) → start → run until SIGTERM/SIGINT →
//! drain → flush spans → exit 0.
//! A bad configuration prints one line and exits 64 (EX_USAGE).

use std::process::ExitCode;

use clap::Parser as _;
use taskgate::{
    config::{self, Cli, Config, Env},
    telemetry, StartError,
};

const EX_USAGE: u8 = 64;

/// mimalloc, not glibc's malloc: after the cache has been churned by distinct ids, glibc keeps
/// the holes the misses' short-lived buffers leave between long-lived entries (64 MiB cache:
/// 112 MiB RSS with glibc, 94 MiB with mimalloc; jemalloc 94 MiB but 10.2 MiB idle). Built
/// with `no_thp`: with transparent huge pages allowed, mimalloc idles at 16 MiB instead of 9.
/// Measured with bench/memory.sh; figures in BENCHMARKS.md ("Memory bound").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other configuration error (clap's own is a usage block).
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            return usage_error(&format!("{first} (see --help)"));
        }
    };
    let cfg = match config::load(&cli, &Env::from_process()) {
        Ok(cfg) => cfg,
        Err(e) => return usage_error(&e),
    };
    if cli.healthcheck {
        return match taskgate::probe(cfg.admin_listen, std::time::Duration::from_secs(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("taskgate: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if cli.check_config {
        // Also proves the CA file and base URL are usable, as start-up would.
        if let Err(e) = taskgate::Upstream::new(&cfg) {
            return usage_error(&e);
        }
        println!("taskgate: configuration ok");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    runtime.block_on(async move {
        // Inside the runtime: the span exporter (feature `otel`) runs its batch task on it.
        let telemetry = telemetry::init(cfg.log_format, &cfg.log);
        let code = serve(cfg, cli.demo).await;
        // After the drain, so the last requests' spans are in the batch; bounded in time.
        telemetry.shutdown().await;
        code
    })
}

/// Runs the proxy (in front of the demo task API with `--demo`) until a signal and the drain.
async fn serve(mut cfg: Config, demo: bool) -> ExitCode {
    #[cfg(feature = "demo")]
    let _demo = if demo {
        match taskgate::demo::start_for_cli(&mut cfg).await {
            Ok(demo) => Some(demo),
            Err(e) => {
                eprintln!("taskgate: cannot start the demo task API: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    #[cfg(not(feature = "demo"))]
    if demo {
        return usage_error(&"--demo: this build has no demo (build with --features demo)");
    }
    tracing::info!(config = ?cfg, version = env!("CARGO_PKG_VERSION"), "starting");
    match taskgate::run(cfg, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ StartError::Setup(_)) => usage_error(&e),
        Err(e) => {
            eprintln!("taskgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("taskgate: {e}");
    ExitCode::from(EX_USAGE)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}
