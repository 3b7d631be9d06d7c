//! The real `taskgate` binary: structured access logs that never hold the key, and the
//! SIGTERM drain. (Configuration errors and exit 64 are in `config_cli.rs`.)

mod common;

use std::time::Duration;

use common::{Binary, HttpClient, MockUpstream, Reply, KEY};
use http::StatusCode;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn access_events(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every log line is JSON"))
        .filter(|v| v["target"] == "taskgate::access")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_json_events_with_spec_fields_and_never_hold_the_key() {
    let mock = MockUpstream::start().await;
    mock.set("done", Reply::task("done", "completed"));
    mock.set("busy", Reply::task("busy", "running"));
    mock.set(
        "denied",
        Reply::json(401, format!(r#"{{"errors":["no token {KEY} found"]}}"#)),
    );
    let proc = Binary::spawn(&mock.base_url(), &[]);
    let c = HttpClient::default();
    let mut bodies = String::new();
    for (path, status) in [
        ("/task/done", 200),
        ("/task/done", 200),
        ("/api/task/busy", 200),
        ("/task/denied", 502),
        ("/task/%2e%2e", 400),
    ] {
        let got = c
            .send(
                proc.public,
                "GET",
                path,
                &[("x-request-id", "trace-me-1"), ("traceparent", TRACEPARENT)],
            )
            .await;
        assert_eq!(got.status, StatusCode::from_u16(status).unwrap(), "{path}");
        bodies.push_str(&got.text());
        bodies.push_str(&format!("{:?}", got.headers));
    }
    let (code, lines, stderr) = proc.terminate();
    assert_eq!(code, 0, "SIGTERM exits 0; stderr: {stderr}");
    assert!(!bodies.contains(KEY));
    for line in lines.iter().chain(std::iter::once(&stderr)) {
        assert!(
            !line.contains(KEY),
            "the key leaked into a log line: {line}"
        );
        assert!(
            !line.contains("TOPSECRET"),
            "part of the key leaked: {line}"
        );
    }
    let events = access_events(&lines);
    assert_eq!(events.len(), 5, "one access event per request");
    let miss = &events[0];
    for field in [
        "request_id",
        "method",
        "route",
        "task_id",
        "status",
        "cache",
        "phase",
        "upstream_status",
        "upstream_ms",
        "total_ms",
    ] {
        assert!(!miss[field].is_null(), "field {field} missing in {miss}");
    }
    assert_eq!(miss["request_id"], "trace-me-1");
    assert_eq!(miss["task_id"], "done");
    assert_eq!(miss["cache"], "MISS");
    assert_eq!(miss["phase"], "completed");
    assert_eq!(miss["upstream_status"], 200);
    assert_eq!(events[1]["cache"], "HIT");
    assert!(
        events[1]["upstream_status"].is_null(),
        "a hit makes no upstream call"
    );
    assert_eq!(events[2]["cache"], "PASS");
    // Why an answer was not kept is named for what was passed, and only for that.
    assert!(miss["not_cached"].is_null(), "{miss}");
    assert!(events[1]["not_cached"].is_null(), "{}", events[1]);
    assert_eq!(events[2]["not_cached"], "pending", "{}", events[2]);
    assert_eq!(events[3]["not_cached"], "error", "{}", events[3]);
    assert_eq!(events[3]["status"], 502);
    assert_eq!(events[3]["upstream_status"], 401);
    assert_eq!(events[4]["status"], 400);
    assert_eq!(events[4]["route"], "bad_id");
    // One trace id throughout: the client's, in every access event, in the span of an event
    // logged while a request is served, and in the `traceparent` sent upstream.
    assert!(
        events.iter().all(|e| e["trace_id"] == CLIENT_TRACE),
        "{events:?}"
    );
    let refused = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["upstream_status"] == 401 && v["target"] != "taskgate::access")
        .expect("the refused key is logged");
    assert_eq!(refused["span"]["trace_id"], CLIENT_TRACE, "{refused}");
    assert_eq!(refused["span"]["request_id"], "trace-me-1", "{refused}");
    assert_eq!(refused["span"]["task_id"], "denied", "{refused}");
    let seen = mock.seen();
    assert!(!seen.is_empty());
    for s in &seen {
        let sent = s.headers["traceparent"].to_str().unwrap();
        assert!(sent.starts_with(&format!("00-{CLIENT_TRACE}-")), "{sent}");
    }
    // The startup event lists the configuration with the key masked.
    let starting = lines
        .iter()
        .find(|l| l.contains("\"starting\""))
        .expect("a startup event");
    assert!(starting.contains("***"), "{starting}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let mock = MockUpstream::start().await;
    mock.set(
        "slow",
        Reply::task("slow", "running").delay(Duration::from_millis(1500)),
    );
    let proc = Binary::spawn(&mock.base_url(), &[("TASKGATE_DRAIN_TIMEOUT", "10s")]);
    let addr = proc.public;
    let in_flight =
        tokio::spawn(async move { HttpClient::default().get(addr, "/task/slow").await });
    while mock.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, lines, stderr) = tokio::task::spawn_blocking(move || proc.terminate())
        .await
        .unwrap();
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["status"]["phase"], "running");
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(lines.iter().any(|l| l.contains("drained")));
    // After the drain nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_is_bounded_by_the_drain_timeout() {
    let mock = MockUpstream::start().await;
    mock.set(
        "stuck",
        Reply::task("stuck", "running").delay(Duration::from_secs(30)),
    );
    let proc = Binary::spawn(
        &mock.base_url(),
        &[
            ("TASKGATE_DRAIN_TIMEOUT", "300ms"),
            ("TASKGATE_UPSTREAM_TIMEOUT", "60s"),
        ],
    );
    let addr = proc.public;
    let _in_flight =
        tokio::spawn(async move { HttpClient::default().get(addr, "/task/stuck").await });
    while mock.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || proc.terminate())
        .await
        .unwrap();
    assert_eq!(code, 0, "stderr: {stderr}");
    // Generous bound: the point is that it does not wait for the 30 s upstream.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// `taskgate --healthcheck` run the way a container health check runs it: same environment as
/// the server, its exit code the verdict. Healthy while the server runs; unhealthy (1, one
/// line on stderr, never the key) once nothing listens on the admin port.
#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_flag_reports_the_running_server() {
    let mock = MockUpstream::start().await;
    let proc = Binary::spawn(&mock.base_url(), &[]);
    let admin = proc.admin.to_string();
    let check = |admin: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskgate"))
            .arg("--healthcheck")
            .env_clear()
            .env("TASKGATE_API_KEY", KEY)
            .env("TASKGATE_ADMIN_LISTEN", admin)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check(&admin);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    // A wildcard admin address (as in the container image) is probed on loopback.
    let wildcard = format!("0.0.0.0:{}", proc.admin.port());
    assert_eq!(check(&wildcard).0, Some(0));

    let (exit, _, _) = tokio::task::spawn_blocking(move || proc.terminate())
        .await
        .unwrap();
    assert_eq!(exit, 0);
    let (code, stderr) = check(&admin);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("taskgate: unhealthy: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains(KEY));
    assert_eq!(mock.calls(), 0, "a health check never reaches the API");
}

#[tokio::test(flavor = "multi_thread")]
async fn viewer_tokens_never_reach_a_log_line_and_each_access_outcome_is_logged() {
    use common::jwt::{self, claims};
    const SECRET: &str = "viewer-secret-for-logs";
    let mock = MockUpstream::start().await;
    mock.set("done", Reply::task("done", "completed"));
    let proc = Binary::spawn(&mock.base_url(), &[("TASKGATE_ACCESS_SECRET", SECRET)]);
    let c = HttpClient::default();
    let good = jwt::hs256(SECRET.as_bytes(), &claims(&["done"], 600));
    let other = jwt::hs256(SECRET.as_bytes(), &claims(&["not-done"], 600));
    let bad = jwt::hs256(b"wrong-secret", &claims(&["done"], 600));
    let bearer = format!("Bearer {good}");
    // (path, headers, status, the access outcome logged)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "/task/done".into(),
            vec![("authorization", bearer.as_str())],
            200,
            "granted",
        ),
        (
            format!("/task/done?access_token={good}"),
            vec![],
            200,
            "granted",
        ),
        ("/task/done".into(), vec![], 401, "missing"),
        (
            format!("/task/done?access_token={bad}"),
            vec![],
            401,
            "invalid",
        ),
        (
            format!("/task/done?access_token={other}"),
            vec![],
            403,
            "forbidden",
        ),
    ];
    for (path, headers, status, _) in &cases {
        let got = c.send(proc.public, "GET", path, headers).await;
        assert_eq!(got.status.as_u16(), *status, "{path}");
    }
    let (code, lines, stderr) = proc.terminate();
    assert_eq!(code, 0, "{stderr}");
    for line in lines.iter().chain(std::iter::once(&stderr)) {
        for token in [&good, &other, &bad] {
            // The signature alone is as secret as the whole token.
            let signature = token.rsplit('.').next().unwrap();
            assert!(!line.contains(signature), "a token leaked into: {line}");
        }
        assert!(
            !line.contains("access_token"),
            "the query leaked into: {line}"
        );
        assert!(
            !line.contains(SECRET),
            "the access secret leaked into: {line}"
        );
    }
    let events = access_events(&lines);
    let outcomes: Vec<&str> = events
        .iter()
        .map(|e| e["access"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = cases.iter().map(|c| c.3).collect();
    assert_eq!(outcomes, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_the_key_file_at_once() {
    let dir = std::env::temp_dir().join(format!("taskgate-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("api-key");
    std::fs::write(&file, "sk_before_hup\n").unwrap();
    let mock = MockUpstream::start().await;
    mock.set("busy", Reply::task("busy", "running"));
    let proc = Binary::spawn(
        &mock.base_url(),
        &[
            ("TASKGATE_API_KEY_FILE", file.to_str().unwrap()),
            // Only the signal can make it look.
            ("TASKGATE_SECRET_RELOAD_INTERVAL", "1h"),
        ],
    );
    let c = HttpClient::default();
    let last_key = |mock: &MockUpstream| {
        mock.seen().last().unwrap().headers["authorization"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        c.get(proc.public, "/task/busy").await.status,
        StatusCode::OK
    );
    assert_eq!(last_key(&mock), "Bearer sk_before_hup");
    let tmp = dir.join("api-key.tmp");
    std::fs::write(&tmp, "sk_after_hup\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    proc.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = c.get(proc.public, "/task/busy").await;
        assert_eq!(got.status, StatusCode::OK);
        if last_key(&mock) == "Bearer sk_after_hup" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP was not acted on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, lines, stderr) = proc.terminate();
    assert_eq!(code, 0, "SIGHUP does not stop the process; {stderr}");
    for line in &lines {
        assert!(
            !line.contains("sk_after_hup") && !line.contains("sk_before_hup"),
            "{line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_token_subcommand_mints_an_hs256_token_or_exits_64_without_a_secret() {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    use hmac::{Hmac, Mac};
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_taskgate"));
        cmd.env_clear().current_dir(std::env::temp_dir()).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(
        &[("TASKGATE_ACCESS_SECRET", "mint-secret")],
        &["token", "--id", "task-1", "--id", "asset-2", "--ttl", "5m"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    // Checked here independently: the signature, the algorithm and the claims.
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"mint-secret").unwrap();
    mac.update(input.as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap())
        .expect("signed with the access secret");
    let (header, payload) = input.split_once('.').unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["ids"], serde_json::json!(["task-1", "asset-2"]));
    let ttl = claims["exp"].as_i64().unwrap() - common::jwt::now();
    assert!((290..=300).contains(&ttl), "{ttl}");

    let out = run(&[], &["token", "--id", "task-1"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no access secret"));
    let out = run(
        &[("TASKGATE_ACCESS_SECRET", "mint-secret")],
        &["token", "--id", "../etc"],
    );
    assert_eq!(out.status.code(), Some(64));
}

/// `taskgate --demo` ends with the quota report: requests answered, the API calls they cost,
/// and the requests that cost none, by reason. Two reads of the unknown id: one API call (the
/// 404 is cached briefly), one hit.
#[cfg(feature = "demo")]
#[test]
fn the_demo_prints_the_quota_report_at_exit() {
    let (child, stdout, public) = spawn_plain(&["--demo"], &[], |line| {
        // The demo's own lines (the simulated API's address, curl lines) are not JSON.
        let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
        (v["message"] == "listening").then(|| v["public"].as_str()?.parse().ok())?
    });
    let path = format!("/task/{}", taskgate::demo::UNKNOWN_TASK_ID);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let c = HttpClient::default();
        for cache in ["MISS", "HIT"] {
            let got = c.get(public, &path).await;
            assert_eq!(got.status, StatusCode::NOT_FOUND);
            assert_eq!(got.header("x-cache"), Some(cache));
        }
    });
    let report: Vec<String> = terminate_plain(child, stdout)
        .into_iter()
        .filter(|l| l.starts_with("taskgate demo: requests answered"))
        .collect();
    assert_eq!(
        report,
        ["taskgate demo: requests answered 2, API calls 1, requests that cost no API call 1 (hit 1)"]
    );
}

/// `TASKGATE_LOG` decides for the access event as for any other: off by its target, on by its
/// target under a quieter default.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_filter_turns_access_events_off_and_on_by_their_target() {
    let mock = MockUpstream::start().await;
    mock.set("done", Reply::task("done", "completed"));
    let c = HttpClient::default();
    for (filter, logged) in [
        ("info,taskgate::access=off", false),
        ("warn,taskgate::server=info,taskgate::access=info", true),
    ] {
        let proc = Binary::spawn(&mock.base_url(), &[("TASKGATE_LOG", filter)]);
        for cache in ["MISS", "HIT"] {
            let got = c.get(proc.public, "/task/done").await;
            assert_eq!(got.header("x-cache"), Some(cache), "{filter}");
        }
        let (code, lines, _) = proc.terminate();
        assert_eq!(code, 0);
        let events = access_events(&lines);
        if logged {
            let caches: Vec<_> = events.iter().map(|e| e["cache"].clone()).collect();
            assert_eq!(caches, ["MISS", "HIT"], "{filter}: {lines:?}");
            // Only what the filter lets through: no `info` line of another target.
            assert!(
                !lines.iter().any(|l| l.contains("\"target\":\"taskgate\"")),
                "{filter}: {lines:?}"
            );
        } else {
            assert!(events.is_empty(), "{filter}: {lines:?}");
            assert!(lines.iter().any(|l| l.contains("shutdown")), "{lines:?}");
        }
    }
}

/// With `TASKGATE_LOG_FORMAT=pretty` the request keeps its `tracing` span: an event logged
/// while it is served shows the span and its fields, as the JSON log shows them under `span`.
#[test]
fn the_pretty_log_shows_the_request_span_of_an_event_inside_a_request() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(MockUpstream::start());
    mock.set(
        "denied",
        Reply::json(401, format!(r#"{{"errors":["no token {KEY} found"]}}"#)),
    );
    let base_url = mock.base_url();
    let env = [
        ("TASKGATE_API_KEY", KEY),
        ("TASKGATE_UPSTREAM_URL", base_url.as_str()),
        ("TASKGATE_LOG_FORMAT", "pretty"),
        ("TASKGATE_LOG", "info"),
        ("NO_COLOR", "1"),
    ];
    let (child, stdout, public) = spawn_plain(&[], &env, |line| {
        let (_, rest) = line.split_once("public=")?;
        rest.split_whitespace().next()?.parse().ok()
    });
    runtime.block_on(async {
        let got = HttpClient::default()
            .send(
                public,
                "GET",
                "/task/denied",
                &[("x-request-id", "pretty-1")],
            )
            .await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    });
    let lines = terminate_plain(child, stdout);
    let refused = lines
        .iter()
        .find(|l| l.contains("upstream refused the API key"))
        .unwrap_or_else(|| panic!("the refusal is logged: {lines:?}"));
    // The compact layout: the span's name before the target, its fields after the event's.
    assert!(refused.contains(" request: taskgate::proxy: "), "{refused}");
    assert!(refused.contains("request_id=\"pretty-1\""), "{refused}");
    assert!(refused.contains("task_id=\"denied\""), "{refused}");
    assert!(!lines.iter().any(|l| l.contains(KEY)));
}

type StdoutLines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// The binary with `args` and `env` on free loopback ports, for output that is not JSON
/// throughout (`common::Binary` reads it as JSON): the child, its stdout, and the public
/// address `listening` finds in a line.
fn spawn_plain(
    args: &[&str],
    env: &[(&str, &str)],
    listening: impl Fn(&str) -> Option<std::net::SocketAddr>,
) -> (std::process::Child, StdoutLines, std::net::SocketAddr) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_taskgate"))
        .args(args)
        .env_clear()
        .current_dir(std::env::temp_dir())
        .env("TASKGATE_LISTEN", "127.0.0.1:0")
        .env("TASKGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let public = loop {
        let line = stdout.next().expect("listens before stdout ends").unwrap();
        if let Some(public) = listening(&line) {
            break public;
        }
    };
    (child, stdout, public)
}

/// SIGTERM; the process must exit 0. What it printed after the lines already read.
fn terminate_plain(mut child: std::process::Child, stdout: StdoutLines) -> Vec<String> {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    stdout.map_while(Result::ok).collect()
}
