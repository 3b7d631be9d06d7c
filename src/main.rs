//! `taskgate`: parse the command line → read config → init logs (and span export) → start →
//! run until SIGTERM/SIGINT → drain → flush spans → exit 0.
//! A bad configuration prints one line and exits 64 (EX_USAGE).
//!
//! SIGHUP re-reads the `*_FILE` secrets. `taskgate token --id ID` prints a viewer token.
//!
//! The run modes (`--demo`, `--check-config`, `--healthcheck`, `token`) and `--config` are this binary's;
//! the setting flags come from the settings table ([`config::flags`]) and go back to the
//! configuration as (key, value) pairs.

use std::{path::PathBuf, process::ExitCode};

use clap::{Arg, ArgMatches, CommandFactory as _, FromArgMatches as _};
use taskgate::{
    config::{self, Args, Config, Env},
    telemetry, StartError,
};

const EX_USAGE: u8 = 64;

/// The run modes and the configuration file; the setting flags are added from the table.
/// There is deliberately no `--api-key`: a flag shows in `ps` to every user of the machine.
#[derive(clap::Parser, Debug)]
#[command(
    name = "taskgate",
    version,
    about = "Caching reverse proxy (sidecar) for the Livepeer Studio task API",
    after_help = "Every setting can also be set in the TOML file (see config/taskgate.toml) or \
                  as a TASKGATE_* environment variable; flags win over the environment, which \
                  wins over the file. The API key comes from TASKGATE_API_KEY or \
                  TASKGATE_API_KEY_FILE. Bad configuration exits with status 64."
)]
struct Cli {
    /// Read settings from this TOML file [default: config/taskgate.toml when present]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit: 0 when valid, 64 with one line when not
    #[arg(long)]
    check_config: bool,
    /// Check that a running taskgate's admin listener answers GET /healthz, and exit 0 (healthy)
    /// or 1: a health check for container images without a shell or curl
    #[arg(long)]
    healthcheck: bool,
    /// Run in front of a built-in simulated Studio API (tasks and assets) on loopback (no key, no network)
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print an HS256 viewer token signed with the first configured access secret
    /// (TASKGATE_ACCESS_SECRET or the first line of TASKGATE_ACCESS_SECRET_FILE), for operators
    /// and tests; exits 64 when there is none
    Token {
        /// A task or asset id the token grants (repeat for several)
        #[arg(long = "id", value_name = "ID", required = true)]
        ids: Vec<String>,
        /// How long the token is valid
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        ttl: String,
    },
}

/// The command line: [`Cli`] plus one flag per table row that is a flag.
fn command() -> clap::Command {
    config::flags().fold(Cli::command(), |cmd, setting| {
        // clap (without its `string` feature) keeps 'static names: a few bytes, once.
        let long: &'static str = Box::leak(setting.flag_name().split_off(2).into_boxed_str());
        cmd.arg(
            Arg::new(setting.key)
                .long(long)
                .value_name(setting.flag.unwrap_or("VALUE"))
                .help(setting.help()),
        )
    })
}

/// The setting flags given, as (key, value) for [`Args::flags`].
fn setting_flags(matches: &ArgMatches) -> Vec<(&'static str, String)> {
    config::flags()
        .filter_map(|s| Some((s.key, matches.get_one::<String>(s.key)?.clone())))
        .collect()
}

/// mimalloc, not glibc's malloc: after the cache has been churned by distinct ids, glibc keeps
/// the holes the misses' short-lived buffers leave between long-lived entries (64 MiB cache:
/// 112 MiB RSS with glibc, 94 MiB with mimalloc; jemalloc 94 MiB but 10.2 MiB idle). Built
/// with `no_thp`: with transparent huge pages allowed, mimalloc idles at 16 MiB instead of 9.
/// Measured with bench/memory.sh; figures in BENCHMARKS.md ("Memory bound").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let (cli, flags) = match command()
        .try_get_matches()
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, setting_flags(&m))))
    {
        Ok(parsed) => parsed,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other configuration error (clap's own is a usage block).
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            return usage_error(&format!("{first} (see --help)"));
        }
    };
    if cli.demo && !cfg!(feature = "demo") {
        return usage_error(&"--demo: this build has no demo (build with --features demo)");
    }
    let minting = matches!(cli.command, Some(Command::Token { .. }));
    let args = Args {
        config: cli.config,
        flags,
        // Minting a token needs no API key.
        #[cfg(feature = "demo")]
        fallback_api_key: (cli.demo || minting).then(|| {
            taskgate::secret::ApiKey::new(if minting {
                "unused-for-minting"
            } else {
                taskgate::demo::DEMO_API_KEY
            })
        }),
        #[cfg(not(feature = "demo"))]
        fallback_api_key: minting.then(|| taskgate::secret::ApiKey::new("unused-for-minting")),
    };
    let cfg = match config::load(&args, &Env::from_process()) {
        Ok(cfg) => cfg,
        Err(e) => return usage_error(&e),
    };
    if let Some(Command::Token { ids, ttl }) = &cli.command {
        return token(&cfg, ids, ttl);
    }
    if cli.healthcheck {
        return match taskgate::probe(cfg.admin_listen, std::time::Duration::from_secs(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("taskgate: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // One thread for the admin listener, the accept loops and the background tasks; the
    // public connections run on the workers (`taskgate::start`), one thread per core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    if cli.check_config {
        // What start-up builds (upstream client and TLS roots, Redis client, webhooks, …),
        // minus binding the listeners: nothing connects anywhere. Inside the runtime, as at
        // start-up: the Redis connection manager is made on it (lazily, without connecting).
        if let Err(e) = runtime.block_on(async { taskgate::Proxy::new(&cfg).map(drop) }) {
            return usage_error(&e);
        }
        println!("taskgate: configuration ok");
        return ExitCode::SUCCESS;
    }
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
async fn serve(cfg: Config, demo: bool) -> ExitCode {
    #[cfg(feature = "demo")]
    let mut cfg = cfg;
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
    tracing::info!(config = ?cfg, version = env!("CARGO_PKG_VERSION"), "starting");
    #[cfg(not(feature = "demo"))]
    let _ = demo; // refused in `main`
    let running = match taskgate::start(cfg).await {
        Ok(running) => running,
        Err(e @ StartError::Setup(_)) => return usage_error(&e),
        Err(e) => {
            eprintln!("taskgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP: re-read the secret files now (a rotation that should not wait for the poll).
    let secrets = std::sync::Arc::clone(running.proxy().secrets());
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("SIGHUP handler installs");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let secrets = std::sync::Arc::clone(&secrets);
            let _ = tokio::task::spawn_blocking(move || secrets.reload_all()).await;
        }
    });
    shutdown_signal().await;
    // Kept past `wait` (which consumes `running`) for the demo's report.
    #[cfg(feature = "demo")]
    let proxy = std::sync::Arc::clone(running.proxy());
    running.shutdown();
    running.wait().await;
    #[cfg(feature = "demo")]
    if let Some(demo) = _demo {
        let readout = proxy.metrics().read(Default::default());
        println!(
            "{}",
            taskgate::demo::exit_summary(&readout, demo.upstream_calls())
        );
    }
    ExitCode::SUCCESS
}

/// `taskgate token`: an HS256 viewer token for `ids`, signed with the first access secret.
fn token(cfg: &Config, ids: &[String], ttl: &str) -> ExitCode {
    let ttl = match config::parse_duration(ttl) {
        Ok(ttl) if !ttl.is_zero() => ttl,
        Ok(_) => return usage_error(&"token --ttl: must be more than 0"),
        Err(e) => return usage_error(&format!("token --ttl: {e}")),
    };
    for id in ids {
        let ok = (1..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return usage_error(&format!("token --id {id:?}: not a task or asset id"));
        }
    }
    let secret = match (&cfg.access_secret, &cfg.access_secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => {
            let first = std::fs::read_to_string(path).ok().and_then(|text| {
                text.lines()
                    .map(str::trim_end)
                    .find(|l| !l.is_empty())
                    .map(taskgate::secret::Secret::new)
            });
            match first {
                Some(secret) => secret,
                None => {
                    return usage_error(&format!(
                        "TASKGATE_ACCESS_SECRET_FILE: {path:?} holds no readable secret"
                    ))
                }
            }
        }
        (None, None) => return usage_error(
            &"token: no access secret (set TASKGATE_ACCESS_SECRET or TASKGATE_ACCESS_SECRET_FILE)",
        ),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match taskgate::viewer::mint(&secret, ids, ttl, now) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(&format!("token: {e}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn setting_flags_reach_the_configuration_under_their_keys() {
        let m = command()
            .try_get_matches_from([
                "taskgate",
                "--demo",
                "--admin-listen",
                "127.0.0.1:1",
                "--log",
                "warn",
            ])
            .unwrap();
        assert!(Cli::from_arg_matches(&m).unwrap().demo);
        assert_eq!(
            setting_flags(&m),
            [
                ("admin_listen", "127.0.0.1:1".to_owned()),
                ("log", "warn".to_owned())
            ]
        );
    }

    #[test]
    fn there_is_no_flag_for_the_key() {
        let m = command().try_get_matches_from(["taskgate", "--api-key", "x"]);
        assert!(m.is_err());
    }
}
