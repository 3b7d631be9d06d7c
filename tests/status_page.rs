//! The admin status page (`GET /`): its figures agree with `/metrics`, and it holds no id,
//! no body and no key.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{taskgate, HttpClient, MockUpstream, Reply};
use http::StatusCode;

const DONE: &str = "statuspage-done-7f3a9c";
const BUSY: &str = "statuspage-busy-2b8e41";
const BOOM: &str = "statuspage-boom-91c0d5";
const MAX_BYTES: u64 = 1 << 20;

/// Every sample of a Prometheus text exposition: `name{labels}` → value.
fn samples(metrics: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of the samples of `name` whose label text contains every one of `labels`.
fn sum(metrics: &[(String, f64)], name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            let bare = series.split('{').next().unwrap();
            bare == name && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// The page's figures: `id="x" data-value="v"` → v.
fn figures(page: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = page;
    while let Some(at) = rest.find(" id=\"") {
        rest = &rest[at + 5..];
        let Some((id, after)) = rest.split_once('"') else {
            break;
        };
        if let Some(value) = after.strip_prefix(" data-value=\"") {
            let value = value.split('"').next().unwrap();
            out.insert(id.to_owned(), value.to_owned());
        }
    }
    out
}

fn num(figures: &HashMap<String, String>, id: &str) -> f64 {
    let v = figures
        .get(id)
        .unwrap_or_else(|| panic!("no figure {id} on the page: {figures:?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("{id}={v:?} is not a number"))
}

#[tokio::test]
async fn status_page_figures_agree_with_metrics_and_hold_no_ids_bodies_or_key() {
    let mock = MockUpstream::start().await;
    mock.set(DONE, Reply::task(DONE, "completed"));
    mock.set(
        BUSY,
        Reply::task(BUSY, "running").delay(Duration::from_millis(200)),
    );
    mock.set(BOOM, Reply::json(500, r#"{"errors":["boom-body-text"]}"#));
    let tg = taskgate(&mock, |c| c.cache_max_bytes = MAX_BYTES).await;
    let c = HttpClient::default();

    // Before any request: zeros everywhere, no division by zero.
    let empty = c.get(tg.admin_addr(), "/").await;
    assert_eq!(empty.status, StatusCode::OK);
    let f = figures(&empty.text());
    assert_eq!(num(&f, "q-requests"), 0.0);
    assert_eq!(num(&f, "q-share"), 0.0);
    assert_eq!(num(&f, "cache-fill"), 0.0);

    let public = tg.public_addr();
    c.get(public, &format!("/task/{DONE}")).await; // miss
    c.get(public, &format!("/task/{DONE}")).await; // hit
    c.get(public, &format!("/task/{DONE}")).await; // hit
    let busy = format!("/task/{BUSY}");
    tokio::join!(c.get(public, &busy), c.get(public, &busy)); // a pass and a coalesced wait
    c.get(public, &format!("/task/{BOOM}")).await; // an upstream 5xx
    c.get(public, "/task/..").await; // refused: a bad id

    let page = c.get(tg.admin_addr(), "/").await;
    let metrics = c.get(tg.admin_addr(), "/metrics").await.text();
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'unsafe-inline'"),
        "{csp}"
    );
    let html = page.text();
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("http://"));
    let f = figures(&html);
    let m = samples(&metrics);

    // The quota report.
    let requests = sum(&m, "taskgate_requests_total", &[]);
    assert_eq!(requests, 7.0, "{metrics}");
    assert_eq!(num(&f, "q-requests"), requests);
    let calls = sum(&m, "taskgate_upstream_requests_total", &[]);
    assert_eq!(calls, 3.0);
    assert_eq!(num(&f, "q-upstream"), calls);
    let avoided = if metrics.contains("taskgate_upstream_calls_avoided_total{") {
        for (series, v) in m
            .iter()
            .filter(|(s, _)| s.starts_with("taskgate_upstream_calls_avoided_total{"))
        {
            let reason = series.split("reason=\"").nth(1).unwrap();
            let reason = reason.split('"').next().unwrap();
            assert_eq!(num(&f, &format!("avoided-{reason}")), *v, "{reason}");
        }
        sum(&m, "taskgate_upstream_calls_avoided_total", &[])
    } else {
        let hits = sum(&m, "taskgate_requests_total", &["cache=\"HIT\""]);
        let coalesced = sum(&m, "taskgate_coalesced_waits_total", &[]);
        assert_eq!((hits, coalesced), (2.0, 1.0));
        assert_eq!(num(&f, "avoided-hit"), hits);
        assert_eq!(num(&f, "avoided-coalesced"), coalesced);
        hits + coalesced
    };
    assert_eq!(num(&f, "q-avoided"), avoided);
    assert_eq!(num(&f, "q-share"), avoided / requests);

    // Answers by cache outcome, and their rates among requests that had one.
    let outcome = |c: &str| sum(&m, "taskgate_requests_total", &[&format!("cache=\"{c}\"")]);
    let looked_up: f64 = ["HIT", "STALE", "MISS", "PASS"]
        .iter()
        .map(|c| outcome(c))
        .sum();
    for c in ["HIT", "MISS", "PASS"] {
        assert_eq!(num(&f, &format!("cache-{c}")), outcome(c), "{c}");
        assert_eq!(num(&f, &format!("rate-{c}")), outcome(c) / looked_up, "{c}");
    }
    assert_eq!(num(&f, "cache-none"), outcome("none"));

    // Cache fill against its bound.
    let bytes = sum(&m, "taskgate_cache_bytes", &[]);
    assert!(bytes > 0.0);
    assert_eq!(
        num(&f, "cache-entries"),
        sum(&m, "taskgate_cache_entries", &[])
    );
    assert_eq!(num(&f, "cache-bytes"), bytes);
    assert_eq!(num(&f, "cache-max"), MAX_BYTES as f64);
    assert_eq!(num(&f, "cache-fill"), bytes / MAX_BYTES as f64);

    // Upstream errors and latency.
    assert_eq!(
        num(&f, "up-5xx"),
        sum(
            &m,
            "taskgate_upstream_requests_total",
            &["status_class=\"5xx\""]
        )
    );
    assert_eq!(num(&f, "up-5xx"), 1.0);
    assert_eq!(num(&f, "up-errors"), 0.0);
    let seconds = sum(&m, "taskgate_upstream_duration_seconds_sum", &[]);
    let timed = sum(&m, "taskgate_upstream_duration_seconds_count", &[]);
    assert_eq!(num(&f, "up-mean"), seconds / timed);
    // The busy task took 200 ms upstream: the p99 estimate lies in its bucket or above.
    assert!(num(&f, "up-p99") >= 0.1, "{f:?}");

    // Watches and Redis.
    assert_eq!(num(&f, "watch-ids"), sum(&m, "taskgate_watch_ids", &[]));
    assert_eq!(
        num(&f, "watch-streams"),
        sum(&m, "taskgate_watch_streams", &[])
    );
    assert_eq!(f.get("redis").map(String::as_str), Some("off"));
    assert!(num(&f, "uptime") >= 0.0);

    // Never an id, a body or the key.
    for id in [DONE, BUSY, BOOM] {
        assert!(!html.contains(id), "task id {id} on the page");
    }
    for body in ["example.com", "userId", "boom-body-text", "upload"] {
        assert!(!html.contains(body), "body text {body:?} on the page");
    }
    assert!(!html.contains(common::KEY) && !html.contains("TOPSECRET"));
}

#[tokio::test]
async fn status_page_is_admin_only_and_refuses_foreign_hosts() {
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.public_addr(), "/").await.status,
        StatusCode::NOT_FOUND
    );
    let foreign = c
        .send(tg.admin_addr(), "GET", "/", &[("host", "evil.example")])
        .await;
    assert_ne!(foreign.status, StatusCode::OK);
    assert!(!foreign.text().contains("<html"));
}
