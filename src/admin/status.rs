//! `GET /` on the admin listener: a status page for people.
//!
//! Plain HTML and CSS, no script and no external asset (the response's CSP forbids both); it
//! reloads itself every 5 s. Every figure is computed from a [`Readout`] — the same rendering
//! `/metrics` serves, parsed back — so the page and a scrape taken at the same moment agree.
//! Each figure sits in an element with an `id` and its exact value in `data-value`, which the
//! browser test compares with `/metrics`.
//!
//! What the metrics hold is all it prints: label values (routes, cache outcomes, reasons,
//! error kinds), counts, sizes and times. Never a secret, a resource id or a body; and
//! everything printed is HTML-escaped all the same.

use std::{fmt::Write as _, time::Duration};

use crate::telemetry::Readout;

const REQUESTS: &str = "taskgate_requests_total";
const UPSTREAM: &str = "taskgate_upstream_requests_total";
const UPSTREAM_SECONDS: &str = "taskgate_upstream_duration_seconds";
const UPSTREAM_IN_FLIGHT: &str = "taskgate_upstream_in_flight";
const COALESCED: &str = "taskgate_coalesced_waits_total";
const AVOIDED: &str = "taskgate_upstream_calls_avoided_total";
const CACHE_ENTRIES: &str = "taskgate_cache_entries";
const CACHE_BYTES: &str = "taskgate_cache_bytes";
const WATCH_IDS: &str = "taskgate_watch_ids";
const WATCH_STREAMS: &str = "taskgate_watch_streams";
const EVENTS_SENT: &str = "taskgate_watch_events_sent_total";
const L2: &str = "taskgate_l2_requests_total";
const L2_SECONDS: &str = "taskgate_l2_duration_seconds";
const WEBHOOKS: &str = "taskgate_webhooks_total";
const WEBHOOK_AGE: &str = "taskgate_webhook_last_accepted_seconds";

/// Cache outcomes in the order the page lists them; any other value present follows.
const OUTCOMES: [&str; 4] = ["HIT", "STALE", "MISS", "PASS"];
/// Shown even when nothing has been counted under them yet.
const OUTCOMES_ALWAYS: [&str; 3] = ["HIT", "MISS", "PASS"];

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:60em;padding:0 1em;color:#1b1f24;background:#fafbfc}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #d0d7de}\
.meta{color:#57606a}table{border-collapse:collapse;width:100%;max-width:44em}\
th,td{padding:.2em .8em .2em 0;text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}\
th{font-weight:600;color:#57606a}.note{color:#57606a;font-size:.9em}meter{width:16em;height:1em}\
.big{font-size:1.6em;font-weight:600}";

/// What the page shows besides the metrics.
pub struct Context {
    pub cache_max_bytes: u64,
    pub uptime: Duration,
    pub version: &'static str,
    pub redis_configured: bool,
}

/// The whole page.
pub fn render(m: &Readout, cx: &Context) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let o = &mut out;
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>taskgate status</title><style>{STYLE}</style></head><body>\n\
         <h1>taskgate {}</h1>\n<p class=\"meta\">up <span id=\"uptime\" data-value=\"{}\">{}</span> \
         · version <span id=\"version\">{}</span> · refreshes every 5 s · \
         <a href=\"/metrics\">/metrics</a></p>\n",
        esc(cx.version),
        cx.uptime.as_secs(),
        esc(&uptime(cx.uptime)),
        esc(cx.version),
    );
    quota(o, m);
    cache(o, m, cx.cache_max_bytes);
    upstream(o, m);
    watches(o, m);
    webhooks(o, m);
    redis(o, m, cx.redis_configured);
    o.push_str("</body></html>\n");
    out
}

/// The quota report: how many requests, how many API calls, and what was saved.
fn quota(o: &mut String, m: &Readout) {
    let requests = m.sum(REQUESTS, &[]);
    let calls = m.sum(UPSTREAM, &[]);
    // Until `taskgate_upstream_calls_avoided_total` has samples, the calls avoided are the
    // requests answered from the cache plus those that shared another's fetch.
    let (reasons, source) = if m.has(AVOIDED) {
        (m.sum_by(AVOIDED, "reason"), "metric")
    } else {
        let mut rows = vec![("hit".to_owned(), m.sum(REQUESTS, &[("cache", "HIT")]))];
        if m.samples(REQUESTS)
            .any(|s| s.label("cache") == Some("STALE"))
        {
            rows.push(("stale".to_owned(), m.sum(REQUESTS, &[("cache", "STALE")])));
        }
        rows.push(("coalesced".to_owned(), m.sum(COALESCED, &[])));
        (rows, "derived")
    };
    let avoided: f64 = reasons.iter().map(|(_, v)| v).sum();
    let share = ratio(avoided, requests);
    o.push_str("<h2>Quota</h2>\n<table>\n");
    row(
        o,
        "public requests",
        "q-requests",
        requests,
        &count(requests),
    );
    row(
        o,
        "upstream (API) calls",
        "q-upstream",
        calls,
        &count(calls),
    );
    row(
        o,
        "API calls avoided",
        "q-avoided",
        avoided,
        &count(avoided),
    );
    let _ = writeln!(
        o,
        "<tr><th>share of requests that cost no API call</th>\
         <td class=\"n big\" id=\"q-share\" data-value=\"{share}\">{}</td></tr>",
        percent(share)
    );
    o.push_str("</table>\n");
    let _ = writeln!(
        o,
        "<table id=\"avoided\" data-source=\"{source}\"><tr><th>calls avoided by reason</th><th></th></tr>"
    );
    for (reason, v) in &reasons {
        row(o, reason, &format!("avoided-{reason}"), *v, &count(*v));
    }
    o.push_str("</table>\n");
    if source == "derived" {
        o.push_str(
            "<p class=\"note\">Calls avoided: answers from the cache plus requests that shared \
             another request's fetch (from <code>taskgate_requests_total</code> and \
             <code>taskgate_coalesced_waits_total</code>).</p>\n",
        );
    }
    // Answers by cache outcome, and each one's share of the requests that had one.
    let by_outcome = m.sum_by(REQUESTS, "cache");
    let got = |c: &str| by_outcome.iter().find(|(k, _)| k == c).map(|(_, v)| *v);
    let mut rows: Vec<(String, f64)> = OUTCOMES
        .iter()
        .filter_map(|c| match got(c) {
            Some(v) => Some(((*c).to_owned(), v)),
            None if OUTCOMES_ALWAYS.contains(c) => Some(((*c).to_owned(), 0.0)),
            None => None,
        })
        .collect();
    rows.extend(
        by_outcome
            .iter()
            .filter(|(k, _)| k != "none" && !OUTCOMES.contains(&k.as_str()))
            .cloned(),
    );
    let looked_up: f64 = rows.iter().map(|(_, v)| v).sum();
    o.push_str(
        "<h2>Answers by cache outcome</h2>\n<table id=\"outcomes\">\
         <tr><th>outcome</th><th>requests</th><th>rate</th></tr>\n",
    );
    for (c, v) in &rows {
        let r = ratio(*v, looked_up);
        let _ = writeln!(
            o,
            "<tr><th>{c}</th><td class=\"n\" id=\"cache-{c}\" data-value=\"{v}\">{}</td>\
             <td class=\"n\" id=\"rate-{c}\" data-value=\"{r}\">{}</td></tr>",
            count(*v),
            percent(r),
            c = esc(c),
        );
    }
    let none = got("none").unwrap_or(0.0);
    let _ = writeln!(
        o,
        "<tr><th>no lookup (refused, webhooks)</th><td class=\"n\" id=\"cache-none\" \
         data-value=\"{none}\">{}</td><td></td></tr>\n</table>",
        count(none)
    );
}

fn cache(o: &mut String, m: &Readout, max: u64) {
    let entries = m.sum(CACHE_ENTRIES, &[]);
    let bytes = m.sum(CACHE_BYTES, &[]);
    let max = max as f64;
    let fill = ratio(bytes, max);
    o.push_str("<h2>Cache</h2>\n<table>\n");
    row(o, "entries", "cache-entries", entries, &count(entries));
    row(o, "size", "cache-bytes", bytes, &size(bytes));
    row(o, "bound", "cache-max", max, &size(max));
    let _ = writeln!(
        o,
        "<tr><th>fill</th><td class=\"n\" id=\"cache-fill\" data-value=\"{fill}\">{}</td>\
         <td><meter min=\"0\" max=\"1\" high=\"0.9\" value=\"{fill}\">{}</meter></td></tr>\n</table>",
        percent(fill),
        percent(fill)
    );
}

fn upstream(o: &mut String, m: &Readout) {
    let calls = m.sum(UPSTREAM, &[]);
    let errors: f64 = m
        .samples(UPSTREAM)
        .filter(|s| s.label("error").is_some_and(|e| e != "none"))
        .map(|s| s.value)
        .sum();
    let s5xx = m.sum(UPSTREAM, &[("status_class", "5xx")]);
    let s4xx = m.sum(UPSTREAM, &[("status_class", "4xx")]);
    let in_flight = m.sum(UPSTREAM_IN_FLIGHT, &[]);
    let seconds = m.sum(&format!("{UPSTREAM_SECONDS}_sum"), &[]);
    let timed = m.sum(&format!("{UPSTREAM_SECONDS}_count"), &[]);
    let mean = ratio(seconds, timed);
    let buckets = m.buckets(UPSTREAM_SECONDS);
    o.push_str("<h2>Upstream</h2>\n<table>\n");
    row(o, "calls", "up-calls", calls, &count(calls));
    row(
        o,
        "in flight now",
        "up-in-flight",
        in_flight,
        &count(in_flight),
    );
    row(
        o,
        "failed (no answer: timeout, connect, reset…)",
        "up-errors",
        errors,
        &count(errors),
    );
    row(o, "answered 5xx", "up-5xx", s5xx, &count(s5xx));
    row(
        o,
        "answered 4xx (404 and 429 included)",
        "up-4xx",
        s4xx,
        &count(s4xx),
    );
    row(o, "mean latency", "up-mean", mean, &millis(timed, mean));
    for (q, id) in [(0.5, "up-p50"), (0.95, "up-p95"), (0.99, "up-p99")] {
        let v = quantile(q, &buckets);
        let label = format!("p{} latency (bucket estimate)", q * 100.0);
        match v {
            Some(v) => row(o, &label, id, v, &millis(1.0, v)),
            None => row(o, &label, id, 0.0, "–"),
        }
    }
    o.push_str("</table>\n<table id=\"upstream-by\"><tr><th>status class</th><th>error</th><th>calls</th></tr>\n");
    for s in m.samples(UPSTREAM) {
        let class = s.label("status_class").unwrap_or_default();
        let error = s.label("error").unwrap_or_default();
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"n\" id=\"up-{}-{}\" data-value=\"{}\">{}</td></tr>",
            esc(class),
            esc(error),
            esc(class),
            esc(error),
            s.value,
            count(s.value)
        );
    }
    o.push_str("</table>\n");
}

fn watches(o: &mut String, m: &Readout) {
    let ids = m.sum(WATCH_IDS, &[]);
    let streams = m.sum(WATCH_STREAMS, &[]);
    let sent = m.sum(EVENTS_SENT, &[]);
    o.push_str("<h2>Watches</h2>\n<table>\n");
    row(
        o,
        "resources watched (one poller each)",
        "watch-ids",
        ids,
        &count(ids),
    );
    row(
        o,
        "open event streams",
        "watch-streams",
        streams,
        &count(streams),
    );
    row(o, "events sent", "watch-events", sent, &count(sent));
    o.push_str("</table>\n");
}

/// How recently Studio's webhooks arrived: with trusted webhooks, a stalled webhook shows here
/// before users see a frozen progress bar.
fn webhooks(o: &mut String, m: &Readout) {
    o.push_str("<h2>Webhooks</h2>\n");
    // NaN (or absent) when the webhook route is off.
    let age = m.sum(WEBHOOK_AGE, &[]);
    if !m.has(WEBHOOK_AGE) || age.is_nan() {
        o.push_str(
            "<p id=\"webhooks\" data-value=\"off\">off (<code>TASKGATE_WEBHOOK_SECRET</code> \
             is not set).</p>\n",
        );
        return;
    }
    let accepted = m.sum(WEBHOOKS, &[("outcome", "accepted")]);
    let _ = writeln!(
        o,
        "<p id=\"webhooks\" data-value=\"on\">on · {}</p>\n<table>",
        if accepted == 0.0 {
            "none accepted since start-up"
        } else {
            "accepting"
        }
    );
    row(
        o,
        "since the last accepted webhook (or start-up)",
        "webhook-age",
        age,
        &uptime(Duration::from_secs_f64(age.max(0.0))),
    );
    for s in m.samples(WEBHOOKS) {
        let outcome = s.label("outcome").unwrap_or_default();
        row(
            o,
            outcome,
            &format!("webhooks-{outcome}"),
            s.value,
            &count(s.value),
        );
    }
    o.push_str("</table>\n");
}

fn redis(o: &mut String, m: &Readout, configured: bool) {
    o.push_str("<h2>Redis (shared level)</h2>\n");
    if !configured {
        o.push_str(
            "<p id=\"redis\" data-value=\"off\">off: this replica caches in memory only \
             (<code>TASKGATE_REDIS_URL</code> is not set).</p>\n",
        );
        return;
    }
    let ops = m.sum(L2, &[]);
    let failed = m.sum(L2, &[("outcome", "error")]) + m.sum(L2, &[("outcome", "timeout")]);
    let hits = m.sum(L2, &[("op", "get"), ("outcome", "hit")]);
    let gets = m.sum(L2, &[("op", "get")]);
    let timed = m.sum(&format!("{L2_SECONDS}_count"), &[]);
    let mean = ratio(m.sum(&format!("{L2_SECONDS}_sum"), &[]), timed);
    let state = if ops == 0.0 {
        "on, not used yet"
    } else if failed == 0.0 {
        "on, no failures"
    } else {
        "on, with failures (see below)"
    };
    let _ = writeln!(o, "<p id=\"redis\" data-value=\"on\">{state}</p>\n<table>");
    row(o, "operations", "l2-ops", ops, &count(ops));
    row(
        o,
        "failed (error or timeout)",
        "l2-failed",
        failed,
        &count(failed),
    );
    let hit_rate = ratio(hits, gets);
    row(
        o,
        "get hit rate",
        "l2-hit-rate",
        hit_rate,
        &percent(hit_rate),
    );
    row(o, "mean latency", "l2-mean", mean, &millis(timed, mean));
    o.push_str(
        "</table>\n<table id=\"l2-by\"><tr><th>op</th><th>outcome</th><th>count</th></tr>\n",
    );
    for s in m.samples(L2) {
        let op = s.label("op").unwrap_or_default();
        let outcome = s.label("outcome").unwrap_or_default();
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"n\" id=\"l2-{}-{}\" data-value=\"{}\">{}</td></tr>",
            esc(op),
            esc(outcome),
            esc(op),
            esc(outcome),
            s.value,
            count(s.value)
        );
    }
    o.push_str("</table>\n");
}

/// One `label | figure` row.
fn row(o: &mut String, label: &str, id: &str, value: f64, shown: &str) {
    let _ = writeln!(
        o,
        "<tr><th>{}</th><td class=\"n\" id=\"{}\" data-value=\"{value}\">{}</td></tr>",
        esc(label),
        esc(id),
        esc(shown)
    );
}

/// `n / d`, or 0 when there is nothing to divide.
fn ratio(n: f64, d: f64) -> f64 {
    if d > 0.0 {
        n / d
    } else {
        0.0
    }
}

/// The `q` quantile estimated from cumulative buckets as PromQL's `histogram_quantile` does:
/// linear inside the bucket that holds the rank; the highest finite bound if it is `+Inf`.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = n - below;
            return Some(if inside > 0.0 {
                lower + (le - lower) * (rank - below) / inside
            } else {
                le
            });
        }
        (lower, below) = (le, n);
    }
    None
}

fn count(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn percent(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

fn size(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024.0 {
        return format!("{} B", count(bytes));
    }
    let (mut v, mut unit) = (bytes / 1024.0, UNITS[0]);
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        (v, unit) = (v / 1024.0, u);
    }
    format!("{v:.1} {unit}")
}

/// Seconds as milliseconds; a dash when nothing was timed.
fn millis(timed: f64, seconds: f64) -> String {
    if timed > 0.0 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        "–".to_owned()
    }
}

fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60) {
        (0, 0, 0, sec) => format!("{sec} s"),
        (0, 0, min, sec) => format!("{min} min {sec:02} s"),
        (0, h, min, sec) => format!("{h} h {min:02} min {sec:02} s"),
        (days, h, min, _) => format!("{days} d {h} h {min:02} min"),
    }
}

/// HTML-escapes text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context {
        Context {
            cache_max_bytes: 1 << 20,
            uptime: Duration::from_secs(3725),
            version: "0.1.0",
            redis_configured: false,
        }
    }

    #[test]
    fn derives_the_quota_report_without_the_avoided_family() {
        let m = Readout::parse(
            "taskgate_requests_total{route=\"task\",status=\"200\",cache=\"HIT\",kind=\"task\",reason=\"none\"} 6\n\
             taskgate_requests_total{route=\"task\",status=\"200\",cache=\"MISS\",kind=\"task\",reason=\"none\"} 3\n\
             taskgate_requests_total{route=\"task\",status=\"400\",cache=\"none\",kind=\"task\",reason=\"bad_id\"} 1\n\
             taskgate_upstream_requests_total{status_class=\"2xx\",error=\"none\"} 2\n\
             taskgate_coalesced_waits_total 1\n\
             taskgate_cache_bytes 262144\n",
        );
        let page = render(&m, &cx());
        assert!(page.contains("id=\"q-requests\" data-value=\"10\">10<"));
        assert!(page.contains("id=\"q-avoided\" data-value=\"7\">7<"));
        assert!(page.contains("id=\"q-share\" data-value=\"0.7\">70.0 %<"));
        assert!(page.contains("data-source=\"derived\""));
        assert!(page.contains("id=\"avoided-coalesced\" data-value=\"1\""));
        assert!(page.contains("id=\"rate-HIT\" data-value=\"0.6666666666666666\">66.7 %<"));
        assert!(page.contains("id=\"cache-PASS\" data-value=\"0\""));
        assert!(!page.contains("cache-STALE"));
        assert!(page.contains("id=\"cache-fill\" data-value=\"0.25\">25.0 %<"));
        assert!(page.contains("id=\"uptime\" data-value=\"3725\">1 h 02 min 05 s<"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(!page.contains("<script"));
    }

    #[test]
    fn shows_the_avoided_family_and_stale_rows_when_present() {
        let m = Readout::parse(
            "taskgate_requests_total{route=\"task\",status=\"200\",cache=\"STALE\",kind=\"task\",reason=\"none\"} 2\n\
             taskgate_requests_total{route=\"task\",status=\"200\",cache=\"HIT\",kind=\"task\",reason=\"none\"} 2\n\
             taskgate_upstream_calls_avoided_total{reason=\"hit\"} 2\n\
             taskgate_upstream_calls_avoided_total{reason=\"stale\"} 2\n\
             taskgate_upstream_calls_avoided_total{reason=\"<b>\"} 1\n",
        );
        let page = render(&m, &cx());
        assert!(page.contains("data-source=\"metric\""));
        assert!(page.contains("id=\"q-avoided\" data-value=\"5\""));
        assert!(page.contains("id=\"avoided-stale\" data-value=\"2\""));
        assert!(page.contains("id=\"cache-STALE\" data-value=\"2\""));
        assert!(page.contains("id=\"rate-STALE\" data-value=\"0.5\""));
        // Label values are escaped like everything else.
        assert!(page.contains("avoided-&lt;b&gt;") && !page.contains("<b>"));
    }

    #[test]
    fn redis_shows_operations_and_failures_when_configured() {
        let m = Readout::parse(
            "taskgate_l2_requests_total{op=\"get\",outcome=\"hit\"} 3\n\
             taskgate_l2_requests_total{op=\"get\",outcome=\"miss\"} 1\n\
             taskgate_l2_requests_total{op=\"set\",outcome=\"timeout\"} 2\n\
             taskgate_l2_duration_seconds_sum 0.012\n\
             taskgate_l2_duration_seconds_count 6\n",
        );
        let page = render(
            &m,
            &Context {
                redis_configured: true,
                ..cx()
            },
        );
        assert!(page.contains("id=\"redis\" data-value=\"on\">on, with failures"));
        assert!(page.contains("id=\"l2-ops\" data-value=\"6\""));
        assert!(page.contains("id=\"l2-failed\" data-value=\"2\""));
        assert!(page.contains("id=\"l2-hit-rate\" data-value=\"0.75\">75.0 %<"));
        assert!(page.contains("id=\"l2-mean\" data-value=\"0.002\">2.00 ms<"));
        assert!(page.contains("id=\"l2-set-timeout\" data-value=\"2\""));
        let off = render(&m, &cx());
        assert!(off.contains("id=\"redis\" data-value=\"off\"") && !off.contains("l2-ops"));
    }

    #[test]
    fn webhooks_show_the_time_since_the_last_accepted_one_or_off() {
        let off = render(
            &Readout::parse("taskgate_webhook_last_accepted_seconds NaN\n"),
            &cx(),
        );
        assert!(off.contains("id=\"webhooks\" data-value=\"off\""), "{off}");
        assert!(!off.contains("webhook-age"));
        let on = render(
            &Readout::parse(
                "taskgate_webhook_last_accepted_seconds 125.5\n\
                 taskgate_webhooks_total{outcome=\"accepted\"} 4\n\
                 taskgate_webhooks_total{outcome=\"bad_signature\"} 1\n",
            ),
            &cx(),
        );
        assert!(
            on.contains("id=\"webhooks\" data-value=\"on\">on · accepting"),
            "{on}"
        );
        assert!(
            on.contains("id=\"webhook-age\" data-value=\"125.5\">2 min 05 s<"),
            "{on}"
        );
        assert!(
            on.contains("id=\"webhooks-bad_signature\" data-value=\"1\">1<"),
            "{on}"
        );
    }

    #[test]
    fn quantiles_follow_histogram_quantile() {
        let b = [(0.01, 2.0), (0.1, 6.0), (1.0, 10.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.5, &b), Some(0.01 + 0.09 * 3.0 / 4.0));
        assert_eq!(quantile(0.1, &b), Some(0.005));
        let inf = [(0.01, 0.0), (f64::INFINITY, 4.0)];
        assert_eq!(quantile(0.5, &inf), Some(0.01));
        assert_eq!(quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn formats() {
        assert_eq!(size(1023.0), "1023 B");
        assert_eq!(size(64.0 * 1024.0 * 1024.0), "64.0 MiB");
        assert_eq!(uptime(Duration::from_secs(59)), "59 s");
        assert_eq!(uptime(Duration::from_secs(90_061)), "1 d 1 h 01 min");
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }
}
