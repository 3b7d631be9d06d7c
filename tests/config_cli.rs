//! The configuration contract as seen from outside: the real binary, an empty environment and
//! a working directory of its own. A bad configuration is one line on stderr naming the
//! setting, and exit status 64; the API key never appears in any output.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

/// Distinctive, so a leak anywhere in the output is caught.
const KEY: &str = "sk-CLI-TEST-5e1d-SHOULD-NEVER-PRINT";
const EX_USAGE: i32 = 64;

/// An empty working directory under the system temp dir, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("taskgate-cli-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().expect("a file has a parent"))
            .expect("temp dir is writable");
        std::fs::write(&path, contents).expect("temp file is writable");
        path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs taskgate in `dir` with only `env` in its environment, and checks that the key did not
/// leak, whatever the outcome.
fn taskgate(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_taskgate"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the taskgate binary runs");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(KEY) && !run.stderr.contains(KEY),
        "the key leaked:\nstdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    run
}

/// Exit 64, nothing on stdout, exactly one line on stderr, and that line names `setting`.
fn assert_usage_error(run: &Run, setting: &str) {
    assert_eq!(run.code, Some(EX_USAGE), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr is not one line: {:?}", run.stderr);
    assert!(
        lines[0].contains(setting),
        "{setting} is not named in {:?}",
        lines[0]
    );
}

#[test]
fn check_config_with_a_good_environment_exits_0() {
    let dir = WorkDir::new();
    let run = taskgate(
        &dir.0,
        &[
            ("TASKGATE_API_KEY", KEY),
            ("TASKGATE_TTL_COMPLETED", "1h"),
            ("TASKGATE_LISTEN", "127.0.0.1:0"),
        ],
        &["--check-config", "--log-format", "pretty"],
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "taskgate: configuration ok\n");
    assert_eq!(run.stderr, "");
}

#[test]
fn the_shipped_config_file_passes_check_config() {
    let dir = WorkDir::new();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/taskgate.toml");
    let run = taskgate(
        &dir.0,
        &[("TASKGATE_API_KEY", KEY)],
        &["--check-config", "--config", shipped.to_str().unwrap()],
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
}

#[test]
fn a_key_file_in_the_working_directory_config_is_used() {
    let dir = WorkDir::new();
    let key = dir.file("secrets/key", &format!("{KEY}\n"));
    dir.file(
        "config/taskgate.toml",
        &format!(
            "api_key_file = {:?}\nttl_failed = \"1m\"\n",
            key.to_str().unwrap()
        ),
    );
    let run = taskgate(&dir.0, &[], &["--check-config"]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
}

#[test]
fn version_prints_the_version() {
    let dir = WorkDir::new();
    let run = taskgate(&dir.0, &[], &["--version"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(
        run.stdout.trim(),
        format!("taskgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_mentions_demo_and_config() {
    let dir = WorkDir::new();
    let run = taskgate(&dir.0, &[], &["--help"]);
    assert_eq!(run.code, Some(0));
    for flag in ["--demo", "--config", "--check-config", "--listen"] {
        assert!(run.stdout.contains(flag), "{flag} missing from --help");
    }
    assert!(
        !run.stdout.contains("--api-key "),
        "no flag may carry the key"
    );
}

#[test]
fn a_bad_duration_exits_64_naming_the_variable() {
    let dir = WorkDir::new();
    let run = taskgate(
        &dir.0,
        &[
            ("TASKGATE_API_KEY", KEY),
            ("TASKGATE_TTL_COMPLETED", "3 days"),
        ],
        &["--check-config"],
    );
    assert_usage_error(&run, "TASKGATE_TTL_COMPLETED");
    assert!(run.stderr.contains("\"3 days\" is not a duration"));
}

#[test]
fn a_bad_address_flag_exits_64_naming_the_flag() {
    let dir = WorkDir::new();
    let run = taskgate(
        &dir.0,
        &[("TASKGATE_API_KEY", KEY)],
        &["--check-config", "--listen", "localhost"],
    );
    assert_usage_error(&run, "--listen");
}

#[test]
fn an_unknown_variable_exits_64() {
    let dir = WorkDir::new();
    let run = taskgate(
        &dir.0,
        &[("TASKGATE_API_KEY", KEY), ("TASKGATE_TTL_COMPLETD", "1h")],
        &["--check-config"],
    );
    assert_usage_error(&run, "TASKGATE_TTL_COMPLETD");
    assert!(run.stderr.contains("unknown setting"));
}

#[test]
fn a_missing_key_exits_64_even_without_check_config() {
    let dir = WorkDir::new();
    let run = taskgate(&dir.0, &[], &[]);
    assert_usage_error(&run, "TASKGATE_API_KEY");
    assert!(run.stderr.contains("missing"));
}

#[test]
fn an_unreadable_key_file_exits_64_naming_the_variable_and_path() {
    let dir = WorkDir::new();
    let run = taskgate(
        &dir.0,
        &[("TASKGATE_API_KEY_FILE", "/nonexistent/taskgate-key")],
        &["--check-config"],
    );
    assert_usage_error(&run, "TASKGATE_API_KEY_FILE");
    assert!(run.stderr.contains("/nonexistent/taskgate-key"));
}

#[test]
fn both_key_sources_exit_64() {
    let dir = WorkDir::new();
    let key = dir.file("key", KEY);
    let run = taskgate(
        &dir.0,
        &[
            ("TASKGATE_API_KEY", KEY),
            ("TASKGATE_API_KEY_FILE", key.to_str().unwrap()),
        ],
        &["--check-config"],
    );
    assert_usage_error(&run, "TASKGATE_API_KEY_FILE");
}

#[test]
fn a_key_that_cannot_go_in_a_header_exits_64_without_printing_it() {
    let dir = WorkDir::new();
    let bad = format!("{KEY} trailing");
    let run = taskgate(
        &dir.0,
        &[("TASKGATE_API_KEY", bad.as_str())],
        &["--check-config"],
    );
    assert_usage_error(&run, "TASKGATE_API_KEY");
}

#[test]
fn an_unknown_key_in_the_working_directory_config_exits_64() {
    let dir = WorkDir::new();
    dir.file("config/taskgate.toml", "ttl_complete = \"1h\"\n");
    let run = taskgate(&dir.0, &[("TASKGATE_API_KEY", KEY)], &["--check-config"]);
    assert_usage_error(&run, "ttl_complete in config/taskgate.toml");
}

#[test]
fn the_api_key_in_a_config_file_exits_64_without_printing_it() {
    let dir = WorkDir::new();
    let file = dir.file("my.toml", &format!("api_key = \"{KEY}\"\n"));
    let run = taskgate(
        &dir.0,
        &[],
        &["--check-config", "--config", file.to_str().unwrap()],
    );
    assert_usage_error(&run, "api_key in");
}

#[test]
fn an_explicit_config_that_cannot_be_read_exits_64() {
    let dir = WorkDir::new();
    let run = taskgate(
        &dir.0,
        &[("TASKGATE_API_KEY", KEY)],
        &["--check-config", "--config", "missing.toml"],
    );
    assert_usage_error(&run, "--config missing.toml");
}

#[test]
fn check_config_with_demo_needs_no_key() {
    let dir = WorkDir::new();
    let run = taskgate(&dir.0, &[], &["--check-config", "--demo"]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "taskgate: configuration ok\n");
}

#[test]
fn help_lists_each_setting_flag_with_its_variable_and_default() {
    let dir = WorkDir::new();
    let run = taskgate(&dir.0, &[], &["--help"]);
    assert_eq!(run.code, Some(0));
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("--admin-listen <ADDR>"))
        .expect("--admin-listen in --help");
    assert!(line.contains("[env: TASKGATE_ADMIN_LISTEN]"), "{line}");
    assert!(line.contains("[default: 127.0.0.1:9090]"), "{line}");
}

#[test]
fn a_redis_url_the_client_refuses_exits_64_without_printing_it() {
    // The syntax is fine; the Redis client, built by --check-config as at start-up, refuses it.
    let dir = WorkDir::new();
    let url = format!("redis://:{KEY}@cache:6379/0?protocol=bogus");
    let run = taskgate(
        &dir.0,
        &[("TASKGATE_API_KEY", "k"), ("TASKGATE_REDIS_URL", &url)],
        &["--check-config"],
    );
    assert_usage_error(&run, "TASKGATE_REDIS_URL");
}

#[cfg(feature = "redis")] // without it, a Redis URL is refused (exit 64)
#[test]
fn check_config_opens_no_connection_to_redis() {
    let dir = WorkDir::new();
    let redis = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let url = format!("redis://:{KEY}@{}/0", redis.local_addr().unwrap());
    let run = taskgate(
        &dir.0,
        &[("TASKGATE_API_KEY", "k"), ("TASKGATE_REDIS_URL", &url)],
        &["--check-config"],
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    // A connection attempt would wait in the backlog even after the process is gone.
    redis.set_nonblocking(true).unwrap();
    let accepted = redis.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "--check-config connected to Redis: {accepted:?}"
    );
}
