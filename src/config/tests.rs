//! The configuration's behaviour through its layers: what each layer accepts and refuses, how
//! errors name the setting, and that secrets never show.

use super::{
    parse::*,
    settings::{self, SETTINGS},
    sources::{build, ConfigFile},
    *,
};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Distinctive strings: a test fails if one shows up in any output.
const KEY: &str = "sk-TEST-7f3a9c-SHOULD-NEVER-PRINT";
const WEBHOOK: &str = "whsec-TEST-SHOULD-NEVER-PRINT";
const REDIS_PASSWORD: &str = "redispw-TEST-SHOULD-NEVER-PRINT";

/// A directory of its own under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("taskgate-config-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("temp file is writable");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key_env<'a>(more: &[(&'a str, &'a str)]) -> Env {
    Env::from_pairs([("TASKGATE_API_KEY", KEY)].iter().chain(more).copied())
}

fn file(text: &str) -> ConfigFile {
    ConfigFile {
        path: "test.toml".into(),
        text: text.into(),
    }
}

/// Loads with the key plus `vars`, no file, no flags.
fn with_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    build(&Args::default(), &key_env(vars), None)
}

fn with_file(text: &str) -> Result<Config, ConfigError> {
    build(&Args::default(), &key_env(&[]), Some(&file(text)))
}

fn err(result: Result<Config, ConfigError>) -> String {
    let e = result.expect_err("configuration should be refused");
    let text = e.to_string();
    assert!(!text.contains('\n'), "error is not one line: {text}");
    text
}

#[test]
fn defaults_match_the_spec() {
    let cfg = with_env(&[]).unwrap();
    assert_eq!(cfg.api_key.expose(), KEY);
    assert_eq!(cfg.upstream_url, "https://livepeer.studio/api");
    assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(cfg.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(cfg.upstream_timeout, Duration::from_secs(10));
    assert_eq!(cfg.connect_timeout, Duration::from_secs(2));
    assert_eq!(cfg.max_body, 1024 * 1024);
    assert_eq!(cfg.upstream_ca_file, None);
    assert_eq!(cfg.upstream_concurrency, 64);
    assert_eq!(cfg.cache_max_bytes, 64 * 1024 * 1024);
    assert_eq!(cfg.ttl_completed, Duration::from_secs(86_400));
    assert_eq!(cfg.ttl_failed, Duration::from_secs(30));
    assert_eq!(cfg.ttl_asset_ready, Duration::from_secs(60));
    assert_eq!(cfg.ttl_not_found, Duration::from_secs(5));
    assert_eq!(cfg.ttl_pending, Duration::ZERO);
    assert_eq!(cfg.cors_origins, CorsOrigins::None);
    assert_eq!(cfg.rate_limit, 0.0);
    assert_eq!(cfg.rate_burst, 0.0);
    assert!(!cfg.trust_forwarded);
    assert_eq!(cfg.max_connections, 10_000);
    assert_eq!(cfg.header_timeout, Duration::from_secs(10));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(60));
    assert!(cfg.redact);
    assert!(cfg.redis_url.is_none());
    assert_eq!(cfg.redis_timeout, Duration::from_millis(50));
    assert!(cfg.webhook_secret.is_none());
    assert_eq!(cfg.watch_interval, Duration::from_secs(2));
    assert_eq!(cfg.watch_max, 1000);
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(cfg.log, "info");
    assert_eq!(cfg.shutdown_grace, Duration::ZERO);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(10));
}

#[test]
fn config_new_and_load_agree_on_defaults() {
    let loaded = with_env(&[]).unwrap();
    let new = Config::new(ApiKey::new(KEY), DEFAULT_UPSTREAM_URL);
    assert_eq!(format!("{loaded:?}"), format!("{new:?}"));
}

#[test]
fn the_shipped_config_file_loads_and_changes_nothing() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
    let cli = Args {
        config: Some(path),
        ..Args::default()
    };
    let cfg = load(&cli, &key_env(&[])).unwrap();
    let new = Config::new(ApiKey::new(KEY), DEFAULT_UPSTREAM_URL);
    assert_eq!(format!("{cfg:?}"), format!("{new:?}"));
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = TempDir::new();
    let toml = dir.file(
        "taskgate.toml",
        "listen = \"127.0.0.1:1001\"\nadmin_listen = \"127.0.0.1:2001\"\n\
         log_format = \"pretty\"\nttl_failed = \"1m\"\n",
    );
    let cli = Args {
        config: Some(toml),
        flags: vec![("listen", "127.0.0.1:1003".into())],
        ..Args::default()
    };
    let env = key_env(&[
        ("TASKGATE_LISTEN", "127.0.0.1:1002"),
        ("TASKGATE_ADMIN_LISTEN", "127.0.0.1:2002"),
    ]);
    let cfg = load(&cli, &env).unwrap();
    assert_eq!(cfg.listen.port(), 1003, "flag wins");
    assert_eq!(cfg.admin_listen.port(), 2002, "env beats file");
    assert_eq!(cfg.log_format, LogFormat::Pretty, "file beats default");
    assert_eq!(cfg.ttl_failed, Duration::from_secs(60));
    assert_eq!(cfg.ttl_completed, Duration::from_secs(86_400), "default");
}

#[test]
fn an_overridden_bad_value_is_still_an_error() {
    let result = build(
        &Args::default(),
        &key_env(&[("TASKGATE_LISTEN", "127.0.0.1:1")]),
        Some(&file("listen = \"nope\"")),
    );
    assert!(err(result).starts_with("listen in test.toml: \"nope\" is not an address"));
}

#[test]
fn an_explicit_config_file_that_cannot_be_read_is_an_error() {
    let cli = Args {
        config: Some("/nonexistent/taskgate.toml".into()),
        ..Args::default()
    };
    let e = err(load(&cli, &key_env(&[])));
    assert!(
        e.starts_with("--config /nonexistent/taskgate.toml: cannot read ("),
        "{e}"
    );
}

#[test]
fn invalid_toml_names_the_file_and_line() {
    let e = err(with_file("ttl_failed = \"1m\"\nlisten = \n"));
    assert!(e.starts_with("test.toml line 2: not valid TOML"), "{e}");
}

#[test]
fn flags_use_the_same_parsers_and_are_named_as_flags() {
    let cli = Args {
        flags: vec![("listen", "localhost".into())],
        ..Args::default()
    };
    let e = err(build(&cli, &key_env(&[]), None));
    assert!(
        e.starts_with("--listen: \"localhost\" is not an address"),
        "{e}"
    );
    let cli = Args {
        flags: vec![
            ("log_format", "pretty".into()),
            ("cors_origins", "*".into()),
            ("upstream_url", "http://127.0.0.1:9999/".into()),
        ],
        ..Args::default()
    };
    let cfg = build(&cli, &key_env(&[]), None).unwrap();
    assert_eq!(cfg.log_format, LogFormat::Pretty);
    assert_eq!(cfg.cors_origins, CorsOrigins::Any);
    assert_eq!(cfg.upstream_url, "http://127.0.0.1:9999");
}

#[test]
fn every_spec_variable_is_a_known_setting() {
    for name in [
        "API_KEY",
        "API_KEY_FILE",
        "UPSTREAM_URL",
        "LISTEN",
        "ADMIN_LISTEN",
        "UPSTREAM_TIMEOUT",
        "CONNECT_TIMEOUT",
        "MAX_BODY",
        "UPSTREAM_CA_FILE",
        "UPSTREAM_CONCURRENCY",
        "CACHE_MAX_BYTES",
        "TTL_COMPLETED",
        "TTL_FAILED",
        "TTL_NOT_FOUND",
        "TTL_PENDING",
        "CORS_ORIGINS",
        "RATE_LIMIT",
        "RATE_BURST",
        "TRUST_FORWARDED",
        "MAX_CONNECTIONS",
        "HEADER_TIMEOUT",
        "IDLE_TIMEOUT",
        "REDACT",
        "REDIS_URL",
        "REDIS_TIMEOUT",
        "WEBHOOK_SECRET",
        "WATCH_INTERVAL",
        "WATCH_MAX",
        "LOG_FORMAT",
        "LOG",
        "SHUTDOWN_GRACE",
        "DRAIN_TIMEOUT",
        "STALE_IF_ERROR",
        "MISS_RATE",
        "MISS_BURST",
        "WATCH_MAX_PER_CLIENT",
        "MAX_CONNECTIONS_PER_CLIENT",
        "REDIS_NAMESPACE",
        "WEBHOOK_TRUST_TTL",
        "WEBHOOK_SECRET_FILE",
        "ACCESS_SECRET",
        "ACCESS_SECRET_FILE",
        "ACCESS_PUBLIC_KEY_FILE",
        "ADMIN_TOKEN",
        "ADMIN_TOKEN_FILE",
        "SECRET_RELOAD_INTERVAL",
        "TTL_ASSET_READY",
    ] {
        assert!(
            settings::find(&name.to_ascii_lowercase()).is_some(),
            "{name}"
        );
    }
    assert_eq!(SETTINGS.len(), 47);
}

#[test]
fn unknown_env_setting_is_an_error() {
    let e = err(with_env(&[("TASKGATE_TTL_COMPLETD", "1h")]));
    assert_eq!(e, "TASKGATE_TTL_COMPLETD: unknown setting");
    // Names are upper case, as the docs write them.
    let e = err(with_env(&[("TASKGATE_ttl_completed", "1h")]));
    assert_eq!(e, "TASKGATE_ttl_completed: unknown setting");
}

#[test]
fn other_env_vars_are_ignored() {
    assert!(with_env(&[("PATH", "/bin"), ("TASKGATEWAY", "x")]).is_ok());
}

#[test]
fn kubernetes_service_links_are_not_mistaken_for_typos() {
    let cfg = with_env(&[
        ("TASKGATE_SERVICE_HOST", "10.0.0.7"),
        ("TASKGATE_SERVICE_PORT", "8080"),
        ("TASKGATE_SERVICE_PORT_HTTP", "8080"),
        ("TASKGATE_PORT", "tcp://10.0.0.7:8080"),
        ("TASKGATE_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
        ("TASKGATE_PORT_8080_TCP_PROTO", "tcp"),
        ("TASKGATE_PORT_8080_TCP_PORT", "8080"),
        ("TASKGATE_PORT_8080_TCP_ADDR", "10.0.0.7"),
        ("TASKGATE_ADMIN_SERVICE_HOST", "10.0.0.8"),
    ]);
    assert!(cfg.is_ok(), "{cfg:?}");
    // A guessed setting name is still caught.
    let e = err(with_env(&[("TASKGATE_PORT", "8080")]));
    assert_eq!(e, "TASKGATE_PORT: unknown setting");
}

#[test]
fn non_utf8_env_value_is_an_error() {
    let mut env = key_env(&[]);
    env.not_utf8.push("TASKGATE_LISTEN".into());
    let e = err(build(&Args::default(), &env, None));
    assert_eq!(e, "TASKGATE_LISTEN: not valid UTF-8");
}

#[test]
fn unknown_toml_key_names_the_file_and_key() {
    assert_eq!(
        err(with_file("ttl_complete = \"1h\"")),
        "ttl_complete in test.toml: unknown setting"
    );
    // Sections are not part of the format: the file is flat.
    assert_eq!(
        err(with_file("[cache]\nttl_completed = \"1h\"")),
        "cache in test.toml: unknown setting"
    );
}

#[test]
fn api_key_in_toml_is_refused() {
    let e = err(with_file(&format!("api_key = \"{KEY}\"")));
    assert!(
        e.starts_with("api_key in test.toml: not accepted in a file"),
        "{e}"
    );
    assert!(e.contains("TASKGATE_API_KEY_FILE"));
    assert!(!e.contains(KEY));
}

#[test]
fn toml_values_may_be_strings_integers_booleans_or_origin_arrays() {
    let cfg = with_file(
        "max_body = 2048\nwatch_max = 0x10\nredact = false\nrate_limit = 2.5\n\
         cors_origins = [\"https://a.example\", \"http://localhost:3000\"]\n\
         cache_max_bytes = \"1GiB\"\n",
    )
    .unwrap();
    assert_eq!(cfg.max_body, 2048);
    assert_eq!(cfg.watch_max, 16);
    assert!(!cfg.redact);
    assert_eq!(cfg.rate_limit, 2.5);
    assert_eq!(
        cfg.cors_origins,
        CorsOrigins::List(vec![
            "https://a.example".into(),
            "http://localhost:3000".into()
        ])
    );
    assert_eq!(cfg.cache_max_bytes, 1 << 30);
}

#[test]
fn toml_values_of_the_wrong_shape_are_errors() {
    assert_eq!(
        err(with_file("listen = [\"127.0.0.1:1\"]")),
        "listen in test.toml: expected a string, number or boolean, found array"
    );
    assert_eq!(
        err(with_file("ttl_failed = 30")),
        "ttl_failed in test.toml: \"30\" is not a duration (write 250ms, 30s, 5m or 24h)"
    );
    assert!(err(with_file("cors_origins = [1]")).contains("expected an array of strings"));
}

#[test]
fn durations_accept_the_documented_forms() {
    for (text, expected) in [
        ("250ms", Duration::from_millis(250)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("24h", Duration::from_secs(86_400)),
        ("2d", Duration::from_secs(172_800)),
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
}

#[test]
fn durations_reject_anything_else() {
    for text in [
        "",
        "3 days",
        "30",
        "1.5s",
        "-1s",
        "s",
        "10S",
        "1w",
        "99999999999999999999s",
        "3651d",
    ] {
        assert!(parse_duration(text).is_err(), "{text}");
    }
    assert_eq!(
        err(with_env(&[("TASKGATE_TTL_COMPLETED", "3 days")])),
        "TASKGATE_TTL_COMPLETED: \"3 days\" is not a duration (write 250ms, 30s, 5m or 24h)"
    );
}

#[test]
fn timeouts_and_intervals_must_be_positive_but_ttls_may_be_zero() {
    let e = err(with_env(&[("TASKGATE_WATCH_INTERVAL", "0s")]));
    assert!(
        e.starts_with("TASKGATE_WATCH_INTERVAL: \"0s\" must be more than 0"),
        "{e}"
    );
    assert!(err(with_env(&[("TASKGATE_UPSTREAM_TIMEOUT", "0")])).contains("more than 0"));
    let cfg = with_env(&[
        ("TASKGATE_TTL_NOT_FOUND", "0s"),
        ("TASKGATE_DRAIN_TIMEOUT", "0"),
    ]);
    assert_eq!(cfg.unwrap().ttl_not_found, Duration::ZERO);
}

#[test]
fn sizes_accept_binary_decimal_and_bare_bytes() {
    for (text, expected) in [
        ("64MiB", 64 << 20),
        ("512KiB", 512 << 10),
        ("1GiB", 1 << 30),
        ("10MB", 10_000_000),
        ("3KB", 3_000),
        ("2GB", 2_000_000_000),
        ("100B", 100),
        ("4096", 4096),
        ("64 MiB", 64 << 20),
    ] {
        assert_eq!(parse_size(text), Ok(expected), "{text}");
    }
    for text in ["", "MiB", "1.5MiB", "64TiB", "-1", "64 M", "99999999999GiB"] {
        assert!(parse_size(text).is_err(), "{text}");
    }
    assert!(err(with_env(&[("TASKGATE_MAX_BODY", "0")])).contains("at least 1 byte"));
    assert!(err(with_env(&[("TASKGATE_CACHE_MAX_BYTES", "lots")])).contains("is not a size"));
}

#[test]
fn addresses_are_ip_and_port() {
    assert_eq!(parse_addr("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
    assert_eq!(parse_addr("0.0.0.0:0"), Ok("0.0.0.0:0".parse().unwrap()));
    for text in [
        "",
        "127.0.0.1",
        ":8080",
        "localhost:8080",
        "127.0.0.1:99999",
    ] {
        assert!(parse_addr(text).is_err(), "{text}");
    }
    let e = err(with_env(&[("TASKGATE_ADMIN_LISTEN", "nope")]));
    assert!(
        e.starts_with("TASKGATE_ADMIN_LISTEN: \"nope\" is not an address"),
        "{e}"
    );
}

#[test]
fn values_are_trimmed_of_surrounding_spaces() {
    let cfg = with_env(&[
        ("TASKGATE_LISTEN", " 127.0.0.1:7 "),
        ("TASKGATE_TTL_FAILED", "1m\n"),
    ]);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.listen.port(), 7);
    assert_eq!(cfg.ttl_failed, Duration::from_secs(60));
}

#[test]
fn booleans_accept_true_false_and_friends() {
    for text in ["true", "TRUE", "1", "yes", "on"] {
        assert_eq!(parse_bool(text), Ok(true), "{text}");
    }
    for text in ["false", "False", "0", "no", "off"] {
        assert_eq!(parse_bool(text), Ok(false), "{text}");
    }
    for text in ["", "2", "maybe", "enabled"] {
        assert!(parse_bool(text).is_err(), "{text}");
    }
}

#[test]
fn counts_must_be_at_least_one() {
    assert_eq!(parse_count("1"), Ok(1));
    assert_eq!(parse_count("10000"), Ok(10_000));
    for text in ["0", "-1", "", "1.5", "many"] {
        assert!(parse_count(text).is_err(), "{text}");
    }
    for var in [
        "TASKGATE_UPSTREAM_CONCURRENCY",
        "TASKGATE_MAX_CONNECTIONS",
        "TASKGATE_WATCH_MAX",
    ] {
        let e = err(with_env(&[(var, "0")]));
        assert_eq!(
            e,
            format!("{var}: \"0\" is not a whole number of at least 1")
        );
    }
}

#[test]
fn rate_limit_is_a_non_negative_number_and_burst_defaults_to_twice_it() {
    let cfg = with_env(&[("TASKGATE_RATE_LIMIT", "5")]).unwrap();
    assert_eq!((cfg.rate_limit, cfg.rate_burst), (5.0, 10.0));
    let cfg = with_env(&[("TASKGATE_RATE_LIMIT", "0.2")]).unwrap();
    assert_eq!(
        cfg.rate_burst, 1.0,
        "a bucket must hold at least one request"
    );
    let cfg = with_env(&[("TASKGATE_RATE_LIMIT", "5"), ("TASKGATE_RATE_BURST", "3")]).unwrap();
    assert_eq!(cfg.rate_burst, 3.0);
    // The rate from the env and the burst default work across layers.
    let cfg = build(
        &Args::default(),
        &key_env(&[("TASKGATE_RATE_LIMIT", "4")]),
        Some(&file("rate_limit = 1")),
    );
    assert_eq!(cfg.unwrap().rate_burst, 8.0);
    for text in ["-1", "inf", "NaN", "fast"] {
        assert!(parse_rate(text).is_err(), "{text}");
    }
    assert!(err(with_env(&[("TASKGATE_RATE_BURST", "0.5")])).contains("at least 1"));
}

#[test]
fn log_format_is_json_or_pretty() {
    assert_eq!(parse_log_format("pretty"), Ok(LogFormat::Pretty));
    assert_eq!(parse_log_format("JSON"), Ok(LogFormat::Json));
    assert!(parse_log_format("text").is_err());
}

#[test]
fn log_filter_is_checked_and_falls_back_to_rust_log() {
    let cfg = with_env(&[("RUST_LOG", "debug")]).unwrap();
    assert_eq!(cfg.log, "debug");
    let cfg = with_env(&[
        ("RUST_LOG", "debug"),
        ("TASKGATE_LOG", "warn,taskgate=info"),
    ]);
    assert_eq!(cfg.unwrap().log, "warn,taskgate=info");
    assert_eq!(with_env(&[("RUST_LOG", "")]).unwrap().log, "info");
    let e = err(with_env(&[("TASKGATE_LOG", "taskgate=loud")]));
    assert!(
        e.starts_with("TASKGATE_LOG: \"taskgate=loud\" is not a log filter"),
        "{e}"
    );
    let e = err(with_env(&[("RUST_LOG", "x=loud")]));
    assert!(e.starts_with("RUST_LOG: "), "{e}");
}

#[test]
fn upstream_url_accepts_https_and_trims_the_trailing_slash() {
    assert_eq!(
        parse_upstream_url("https://livepeer.studio/api/"),
        Ok("https://livepeer.studio/api".into())
    );
    assert_eq!(
        parse_upstream_url("https://example.com:8443"),
        Ok("https://example.com:8443".into())
    );
    assert_eq!(
        parse_upstream_url("HTTPS://Example.com/"),
        Ok("HTTPS://Example.com".into())
    );
}

#[test]
fn http_upstream_is_allowed_only_to_loopback() {
    for ok in [
        "http://127.0.0.1:8081",
        "http://127.3.2.1/api",
        "http://localhost:9000/api/",
        "http://[::1]:9000",
    ] {
        assert!(parse_upstream_url(ok).is_ok(), "{ok}");
    }
    for bad in [
        "http://livepeer.studio/api",
        "http://10.0.0.1",
        "http://[::2]:80",
    ] {
        let e = parse_upstream_url(bad).unwrap_err();
        assert!(e.contains("would send the API key in clear"), "{bad}: {e}");
    }
    let e = err(with_env(&[(
        "TASKGATE_UPSTREAM_URL",
        "http://api.example/",
    )]));
    assert!(
        e.starts_with("TASKGATE_UPSTREAM_URL: \"http://api.example/\""),
        "{e}"
    );
}

#[test]
fn upstream_url_must_be_absolute_without_query_fragment_or_user() {
    for bad in [
        "",
        "livepeer.studio/api",
        "/api",
        "ftp://livepeer.studio",
        "https://livepeer.studio/api?x=1",
        "https://livepeer.studio/api#top",
        "https://",
    ] {
        assert!(parse_upstream_url(bad).is_err(), "{bad}");
    }
    let e = parse_upstream_url("https://user:hunter2@livepeer.studio").unwrap_err();
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn upstream_ca_file_must_exist_and_hold_a_certificate() {
    let dir = TempDir::new();
    let good = dir.file(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let junk = dir.file("junk.pem", "not a certificate");
    let good_text = good.to_str().unwrap();
    let cfg = with_env(&[("TASKGATE_UPSTREAM_CA_FILE", good_text)]).unwrap();
    assert_eq!(cfg.upstream_ca_file, Some(good.clone()));
    let e = err(with_env(&[(
        "TASKGATE_UPSTREAM_CA_FILE",
        junk.to_str().unwrap(),
    )]));
    assert!(e.contains("holds no PEM certificate"), "{e}");
    let e = err(with_env(&[(
        "TASKGATE_UPSTREAM_CA_FILE",
        "/nonexistent/ca.pem",
    )]));
    assert!(
        e.starts_with("TASKGATE_UPSTREAM_CA_FILE: cannot read \"/nonexistent/ca.pem\" ("),
        "{e}"
    );
}

#[test]
fn cors_origins_are_none_any_or_an_exact_list() {
    assert_eq!(parse_cors_origins(""), Ok(CorsOrigins::None));
    assert_eq!(parse_cors_origins(" , "), Ok(CorsOrigins::None));
    assert_eq!(parse_cors_origins("*"), Ok(CorsOrigins::Any));
    assert_eq!(
        parse_cors_origins("https://App.Example.com, http://localhost:3000,"),
        Ok(CorsOrigins::List(vec![
            "https://app.example.com".into(),
            "http://localhost:3000".into()
        ]))
    );
}

#[test]
fn a_bad_cors_origin_is_named() {
    for bad in [
        "https://app.example.com/",
        "https://app.example.com/path",
        "app.example.com",
        "ftp://app.example.com",
        "https://u@app.example.com",
        "https://a.example,*",
    ] {
        assert!(parse_cors_origins(bad).is_err(), "{bad}");
    }
    let e = err(with_env(&[(
        "TASKGATE_CORS_ORIGINS",
        "https://ok.example,https://bad.example/",
    )]));
    assert!(
        e.starts_with("TASKGATE_CORS_ORIGINS: \"https://bad.example/\" is not an origin"),
        "{e}"
    );
}

#[test]
fn redis_url_needs_a_redis_scheme_and_empty_means_off() {
    let url = format!("redis://:{REDIS_PASSWORD}@10.0.0.5:6379/0");
    let cfg = with_env(&[("TASKGATE_REDIS_URL", &url)]).unwrap();
    assert_eq!(cfg.redis_url.unwrap().expose(), url);
    assert!(with_env(&[("TASKGATE_REDIS_URL", "rediss://cache:6380")]).is_ok());
    assert!(with_env(&[("TASKGATE_REDIS_URL", "")])
        .unwrap()
        .redis_url
        .is_none());
    let bad = format!("http://:{REDIS_PASSWORD}@cache:6379");
    let e = err(with_env(&[("TASKGATE_REDIS_URL", &bad)]));
    assert!(e.starts_with("TASKGATE_REDIS_URL: the value (hidden) is not a Redis URL"));
    assert!(!e.contains(REDIS_PASSWORD));
    assert!(err(with_env(&[("TASKGATE_REDIS_URL", "redis://")])).contains("not a Redis URL"));
    // Past the scheme, the syntax is checked here too; the value stays hidden.
    let bad = format!("redis://:{REDIS_PASSWORD}@cache:notaport/0");
    let e = err(with_env(&[("TASKGATE_REDIS_URL", &bad)]));
    assert!(e.contains("not a Redis URL (the port"), "{e}");
    assert!(!e.contains(REDIS_PASSWORD), "{e}");
}

#[test]
fn webhook_secret_turns_the_route_on_and_empty_leaves_it_off() {
    let cfg = with_env(&[("TASKGATE_WEBHOOK_SECRET", WEBHOOK)]).unwrap();
    assert_eq!(cfg.webhook_secret.unwrap().expose(), WEBHOOK);
    let cfg = with_env(&[("TASKGATE_WEBHOOK_SECRET", "")]).unwrap();
    assert!(cfg.webhook_secret.is_none());
}

#[test]
fn key_file_is_read_and_its_trailing_newline_trimmed() {
    let dir = TempDir::new();
    let path = dir.file("key", &format!("{KEY}\r\n\n"));
    let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", path.to_str().unwrap())]);
    let cfg = build(&Args::default(), &env, None).unwrap();
    assert_eq!(cfg.api_key.expose(), KEY);
}

#[test]
fn key_file_may_come_from_the_file_or_a_flag() {
    let dir = TempDir::new();
    let path = dir.file("key", KEY);
    let path = path.to_str().unwrap();
    let cfg = build(
        &Args::default(),
        &Env::default(),
        Some(&file(&format!("api_key_file = \"{path}\""))),
    );
    assert_eq!(cfg.unwrap().api_key.expose(), KEY);
    let cli = Args {
        flags: vec![("api_key_file", path.into())],
        ..Args::default()
    };
    assert_eq!(
        build(&cli, &Env::default(), None).unwrap().api_key.expose(),
        KEY
    );
}

#[test]
fn a_higher_layer_key_wins_and_an_overridden_key_file_is_not_read() {
    let result = build(
        &Args::default(),
        &key_env(&[]),
        Some(&file("api_key_file = \"/nonexistent/key\"")),
    );
    assert_eq!(result.unwrap().api_key.expose(), KEY);
}

#[test]
fn both_key_sources_in_the_environment_is_an_error() {
    let e = err(with_env(&[("TASKGATE_API_KEY_FILE", "/run/secrets/key")]));
    assert_eq!(
        e,
        "TASKGATE_API_KEY_FILE: set together with TASKGATE_API_KEY (set only one of them)"
    );
}

#[test]
fn an_unreadable_key_file_is_named_with_its_path_and_reason() {
    let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", "/nonexistent/key")]);
    let e = err(build(&Args::default(), &env, None));
    assert!(
        e.starts_with("TASKGATE_API_KEY_FILE: cannot read \"/nonexistent/key\" (No such file"),
        "{e}"
    );
    let cli = Args {
        flags: vec![("api_key_file", "/nonexistent/key".into())],
        ..Args::default()
    };
    assert!(err(build(&cli, &Env::default(), None)).starts_with("--api-key-file: cannot read"));
}

#[test]
fn an_empty_or_huge_key_file_is_an_error() {
    let dir = TempDir::new();
    let empty = dir.file("empty", "\n");
    let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", empty.to_str().unwrap())]);
    assert!(err(build(&Args::default(), &env, None)).ends_with("is empty"));
    let huge = dir.file("huge", &"k".repeat(20_000));
    let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", huge.to_str().unwrap())]);
    assert!(err(build(&Args::default(), &env, None)).contains("too large"));
}

#[test]
fn a_key_that_cannot_go_in_a_header_is_refused_without_printing_it() {
    for bad in [format!("{KEY} x"), format!("{KEY}\n"), format!("{KEY}é")] {
        let env = Env::from_pairs([("TASKGATE_API_KEY", bad.as_str())]);
        let e = err(build(&Args::default(), &env, None));
        assert!(
            e.starts_with("TASKGATE_API_KEY: the key contains characters"),
            "{e}"
        );
        assert!(!e.contains(KEY), "{e}");
    }
    let env = Env::from_pairs([("TASKGATE_API_KEY", "")]);
    assert_eq!(
        err(build(&Args::default(), &env, None)),
        "TASKGATE_API_KEY: the key is empty"
    );
    let dir = TempDir::new();
    let path = dir.file("key", &format!("  {KEY}\n"));
    let env = Env::from_pairs([("TASKGATE_API_KEY_FILE", path.to_str().unwrap())]);
    let e = err(build(&Args::default(), &env, None));
    assert!(e.contains("contains characters") && !e.contains(KEY), "{e}");
}

#[test]
fn a_missing_key_is_an_error_unless_the_binary_supplies_one() {
    let e = err(build(&Args::default(), &Env::default(), None));
    assert_eq!(
        e,
        "TASKGATE_API_KEY: missing (set TASKGATE_API_KEY or TASKGATE_API_KEY_FILE, \
         or run with --demo)"
    );
    let cli = Args {
        fallback_api_key: Some(ApiKey::new("demo-key-not-a-secret")),
        ..Args::default()
    };
    let cfg = build(&cli, &Env::default(), None).unwrap();
    assert_eq!(cfg.api_key.expose(), "demo-key-not-a-secret");
}

#[test]
fn secrets_never_appear_in_debug() {
    let url = format!("rediss://default:{REDIS_PASSWORD}@cache:6380/0");
    let cfg = with_env(&[
        ("TASKGATE_REDIS_URL", &url),
        ("TASKGATE_WEBHOOK_SECRET", WEBHOOK),
    ])
    .unwrap();
    let env = key_env(&[("TASKGATE_WEBHOOK_SECRET", WEBHOOK)]);
    for text in [
        format!("{cfg:?}"),
        format!("{cfg:#?}"),
        format!("{env:?}"),
        format!("{}", cfg.api_key),
    ] {
        for secret in [KEY, WEBHOOK, REDIS_PASSWORD] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    assert!(format!("{cfg:?}").contains("api_key: ***"));
}

#[test]
fn secrets_never_appear_in_errors() {
    let errors = [
        with_env(&[("TASKGATE_REDIS_URL", &format!("{KEY}://{REDIS_PASSWORD}"))]),
        build(
            &Args::default(),
            &Env::from_pairs([("TASKGATE_API_KEY", format!("{KEY} "))]),
            None,
        ),
        with_env(&[("TASKGATE_API_KEY_FILE", KEY)]),
        with_file(&format!("api_key = \"{KEY}\"")),
        with_file(&format!("webhook_secret = [\"{WEBHOOK}\"]")),
        with_file(&format!("redis_url = \"{REDIS_PASSWORD}\"")),
        with_env(&[("TASKGATE_UPSTREAM_URL", &format!("https://u:{KEY}@x"))]),
    ];
    for result in errors {
        let e = err(result);
        for secret in [KEY, WEBHOOK, REDIS_PASSWORD] {
            assert!(!e.contains(secret), "{secret} in {e}");
        }
    }
}

#[test]
fn derived_budgets_and_caps_follow_their_settings() {
    let cfg = with_env(&[]).unwrap();
    assert_eq!((cfg.miss_rate, cfg.miss_burst), (20.0, 40.0));
    assert_eq!(cfg.max_connections_per_client, 2500);
    assert_eq!(cfg.watch_max_per_client, 32);
    assert_eq!(cfg.stale_if_error, Duration::from_secs(24 * 3600));
    assert_eq!(cfg.redis_namespace, None);
    let cfg = with_env(&[
        ("TASKGATE_MISS_RATE", "0"),
        ("TASKGATE_MAX_CONNECTIONS", "2"),
        ("TASKGATE_REDIS_NAMESPACE", "staging.app-1"),
    ])
    .unwrap();
    assert_eq!((cfg.miss_rate, cfg.miss_burst), (0.0, 0.0));
    assert_eq!(cfg.max_connections_per_client, 1, "at least one");
    assert_eq!(cfg.redis_namespace.as_deref(), Some("staging.app-1"));
    for bad in ["a:b", "a b", &"x".repeat(65)] {
        let e = with_env(&[("TASKGATE_REDIS_NAMESPACE", bad)]).unwrap_err();
        assert_eq!(e.setting(), "TASKGATE_REDIS_NAMESPACE");
    }
}

#[test]
fn cors_origin_patterns_are_accepted_and_malformed_ones_refused() {
    assert_eq!(
        parse_cors_origins("https://*.Example.com, http://*.example.com:8080, https://a.example"),
        Ok(CorsOrigins::List(vec![
            "https://*.example.com".into(),
            "http://*.example.com:8080".into(),
            "https://a.example".into(),
        ]))
    );
    for bad in [
        "https://*.com",
        "https://*example.com",
        "https://a.*.example.com",
        "https://*.example.*",
        "*.example.com",
        "ftp://*.example.com",
        "https://*.example.com/",
        "https://*.example.com:0",
        "https://*.example.com:99999",
        "https://*.example.com:",
        "https://*.",
        "https://**.example.com",
        "https://*.exa mple.com",
        "https://*.example.com.",
    ] {
        let e = parse_cors_origins(bad).expect_err(bad);
        assert!(e.contains("not an origin pattern"), "{bad}: {e}");
    }
    let e = err(with_env(&[("TASKGATE_CORS_ORIGINS", "https://*.com")]));
    assert!(e.starts_with("TASKGATE_CORS_ORIGINS: "), "{e}");
}

#[test]
fn a_secret_and_its_file_together_are_refused() {
    for name in [
        "TASKGATE_WEBHOOK_SECRET",
        "TASKGATE_ACCESS_SECRET",
        "TASKGATE_ADMIN_TOKEN",
    ] {
        let file = format!("{name}_FILE");
        let e = err(with_env(&[(name, "x"), (file.as_str(), "/run/secrets/x")]));
        assert!(
            e.starts_with(&format!("{file}: set together with {name}")),
            "{e}"
        );
    }
    let cfg = with_env(&[
        ("TASKGATE_ACCESS_SECRET_FILE", "/run/secrets/access"),
        ("TASKGATE_ACCESS_PUBLIC_KEY_FILE", "/run/secrets/keys.pem"),
        ("TASKGATE_ADMIN_TOKEN", "adm"),
        ("TASKGATE_SECRET_RELOAD_INTERVAL", "2s"),
    ])
    .unwrap();
    assert_eq!(
        cfg.access_secret_file.as_deref(),
        Some(std::path::Path::new("/run/secrets/access"))
    );
    assert_eq!(cfg.admin_token.unwrap().expose(), "adm");
    assert_eq!(cfg.secret_reload_interval, Duration::from_secs(2));
    assert_eq!(format!("{:?}", cfg.access_secret), "None");
}
