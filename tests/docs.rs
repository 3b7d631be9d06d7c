//! The documentation against the code. Each test reads files of this repository only (never the
//! network) and fails when a page and the code disagree:
//!
//! - `docs/configuration.md`: the settings table against `config/taskgate.toml` (both ways),
//!   against the configuration loader (every variable is known, every literal default is the
//!   built-in one), and the flag list against the command-line parser;
//! - `docs/operating.md`: the metric table against the metrics taskgate registers (both ways,
//!   with their types), the admin route table against a running admin listener, and the
//!   OpenTelemetry table against the `OTEL_*` variables `src/telemetry/mod.rs` reads;
//! - `docs/behaviour.md`: every path of the route table against `taskgate::route::parse`;
//! - every `taskgate_*` metric name mentioned anywhere in `README.md` or `docs/`;
//! - every relative link (and `#anchor`) in `README.md` and `docs/*.md`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{taskgate, HttpClient, MockUpstream};
use http::StatusCode;
use taskgate::{
    config::{self, Args, Env},
    route::{self, Route},
    telemetry::{Metrics, Snapshot},
    UpstreamReport,
};

/// A real Studio task id (the demo's upload), put where a page writes `{id}`.
const EXAMPLE_ID: &str = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// `README.md` and every page under `docs/`, as paths relative to the repository root.
fn doc_files() -> Vec<String> {
    let mut files = vec!["README.md".to_owned()];
    let mut pages: Vec<String> = fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// The text between backticks on one line: `a` and `b` in "x `a` y `b`".
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The lines of a Markdown file outside fenced code blocks, with their line numbers.
fn prose_lines(doc: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The body rows (cells trimmed) of the one table whose header row is exactly `header`.
fn table(doc: &str, page: &str, header: &[&str]) -> Vec<Vec<String>> {
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let lines: Vec<&str> = doc.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with('|') && cells(lines[i]) == header)
        .collect();
    assert_eq!(
        starts.len(),
        1,
        "{page}: expected exactly one table with the header {header:?}"
    );
    let rows: Vec<Vec<String>> = lines[starts[0] + 2..]
        .iter()
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| cells(l))
        .collect();
    for row in &rows {
        assert_eq!(
            row.len(),
            header.len(),
            "{page}: a row of the {header:?} table has the wrong number of cells: {row:?}"
        );
    }
    assert!(!rows.is_empty(), "{page}: the {header:?} table is empty");
    rows
}

// --- docs/configuration.md -----------------------------------------------------------------

/// The keys of `config/taskgate.toml`, set (`key = value`) or commented (`# key = value`), each
/// with the value of its last line (the file shows each at its default, some after an example).
fn toml_keys() -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    for line in read("config/taskgate.toml").lines() {
        let line = line.trim();
        let line = line.strip_prefix('#').map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let is_key = !key.is_empty()
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_key {
            keys.insert(key.to_owned(), value.trim().trim_matches('"').to_owned());
        }
    }
    assert!(
        keys.len() > 20,
        "config/taskgate.toml: found only {keys:?}; has its format changed?"
    );
    keys
}

/// The settings table of docs/configuration.md: variable → default cell.
fn documented_settings() -> BTreeMap<String, String> {
    let page = "docs/configuration.md";
    let mut vars = BTreeMap::new();
    for row in table(&read(page), page, &["variable", "default", "meaning"]) {
        let spans = code_spans(&row[0]);
        assert!(
            spans.len() == 1
                && spans[0].starts_with("TASKGATE_")
                && row[0] == format!("`{}`", spans[0]),
            "{page}: the first cell of a settings row must be one `TASKGATE_*` variable: {:?}",
            row[0]
        );
        let previous = vars.insert(spans[0].to_owned(), row[1].clone());
        assert!(previous.is_none(), "{page}: {} is listed twice", spans[0]);
    }
    vars
}

/// The API key is the one setting the file refuses (it would end up in a ConfigMap or a
/// repository), so the table lists it and `config/taskgate.toml` does not.
const ENV_ONLY: &[&str] = &["TASKGATE_API_KEY"];

#[test]
fn settings_table_lists_exactly_the_keys_of_the_config_file() {
    let documented: BTreeSet<String> = documented_settings()
        .into_keys()
        .filter(|v| !ENV_ONLY.contains(&v.as_str()))
        .collect();
    let in_file: BTreeSet<String> = toml_keys()
        .into_keys()
        .map(|k| format!("TASKGATE_{}", k.to_ascii_uppercase()))
        .collect();
    let undocumented: Vec<_> = in_file.difference(&documented).collect();
    let not_in_file: Vec<_> = documented.difference(&in_file).collect();
    assert!(
        undocumented.is_empty() && not_in_file.is_empty(),
        "config/taskgate.toml keys missing from the table in docs/configuration.md: \
         {undocumented:?}; table rows with no key in config/taskgate.toml: {not_in_file:?}"
    );
    for var in ENV_ONLY {
        let key = var.trim_start_matches("TASKGATE_").to_ascii_lowercase();
        assert!(
            !toml_keys().contains_key(&key),
            "{key} is in config/taskgate.toml: drop {var} from ENV_ONLY"
        );
    }
}

/// A key for `load` (the loader refuses to run without one).
const PROBE_KEY: (&str, &str) = ("TASKGATE_API_KEY", "sk-docs-test");

fn load_with(var: &str, value: &str) -> Result<String, String> {
    let mut pairs = vec![PROBE_KEY];
    if var != PROBE_KEY.0 {
        pairs.push((var, value));
    }
    config::load(&Args::default(), &Env::from_pairs(pairs))
        .map(|cfg| format!("{cfg:?}"))
        .map_err(|e| e.to_string())
}

#[test]
fn every_documented_setting_is_known_and_its_literal_default_is_the_built_in_one() {
    // The probe can fail: an unknown variable is refused with these words.
    let unknown = load_with("TASKGATE_NOT_A_SETTING", "1").unwrap_err();
    assert!(unknown.ends_with("unknown setting"), "{unknown}");

    let defaults = load_with(PROBE_KEY.0, "").expect("the built-in defaults load");
    let mut checked_defaults = 0;
    for (var, default) in documented_settings() {
        // The default cell starts with the value as one would write it (`10s`, `127.0.0.1:8080`)
        // or with "empty"; `—` (none) and prose such as `2 × rate` are not values.
        let literal = match code_spans(&default).first() {
            Some(v) if default.starts_with('`') && !v.contains(char::is_whitespace) => Some(*v),
            _ if default.starts_with("empty") => Some(""),
            _ => None,
        };
        match literal {
            Some(value) if var != PROBE_KEY.0 => {
                let got = load_with(&var, value).unwrap_or_else(|e| {
                    panic!("docs/configuration.md: {var}={value:?} (the documented default) is refused: {e}")
                });
                assert_eq!(
                    got, defaults,
                    "docs/configuration.md: {var} documents the default {value:?}, but setting it \
                     gives another configuration than leaving it unset"
                );
                checked_defaults += 1;
            }
            _ => {
                if let Err(e) = load_with(&var, "x") {
                    assert!(
                        !e.ends_with("unknown setting"),
                        "docs/configuration.md documents {var}, which taskgate does not know: {e}"
                    );
                }
            }
        }
    }
    assert!(
        checked_defaults > 20,
        "only {checked_defaults} defaults were checked"
    );
}

#[test]
fn flag_list_is_the_command_line_parser_flags() {
    let page = "docs/configuration.md";
    let doc = read(page);
    let section = doc
        .split("\n## Flags\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{page} has no \"## Flags\" section"));
    let section = section.split("\n## ").next().unwrap();
    let documented: BTreeSet<String> = code_spans(section)
        .into_iter()
        .filter_map(|s| s.strip_prefix("--"))
        .map(|s| s.split_whitespace().next().unwrap_or_default().to_owned())
        .collect();
    // The binary's own parser (its run modes, plus the setting flags of the settings table),
    // as its --help lists it: each option line starts with its flag.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_taskgate"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("taskgate --help runs");
    let help = String::from_utf8(help.stdout).expect("--help is UTF-8");
    let parsed: BTreeSet<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| line.split_whitespace().find_map(|w| w.strip_prefix("--")))
        .map(|flag| flag.trim_end_matches(',').to_owned())
        .collect();
    assert!(
        parsed.contains("demo") && parsed.contains("help"),
        "{parsed:?}"
    );
    assert_eq!(
        documented, parsed,
        "{page}: the flags listed under \"Flags\" differ from the command-line parser's"
    );
}

// --- docs/operating.md: metrics -------------------------------------------------------------

/// The names `src/telemetry/metrics.rs` registers: the first string argument of each
/// `registry.register(` call, under the registry's `taskgate` prefix.
fn names_registered_in_source() -> BTreeSet<String> {
    let src = read("src/telemetry/metrics.rs");
    assert!(
        src.contains("Registry::with_prefix(\"taskgate\")"),
        "src/telemetry/metrics.rs: the registry prefix changed"
    );
    let names: BTreeSet<String> = src
        .split("registry.register(")
        .skip(1)
        .map(|call| {
            let name = call.split('"').nth(1).expect("register(\"name\", ...)");
            format!("taskgate_{name}")
        })
        .collect();
    assert!(
        names.len() > 10,
        "src/telemetry/metrics.rs: found only {names:?}"
    );
    names
}

/// Every metric taskgate registers, as scraped, name → type. A labelled family is rendered
/// only once it has a sample, so each gets one through the public recording methods first.
/// A counter is named with `_total`, as in its samples (the 0.0.4 text format also writes it in
/// `# TYPE`; OpenMetrics would not, so it is added when missing).
fn registered_metrics() -> BTreeMap<String, String> {
    let m = Metrics::new();
    m.request(
        "task",
        Some("task"),
        200,
        None,
        None,
        Some("hit"),
        Duration::ZERO,
    );
    m.upstream_finished(&UpstreamReport {
        status: Some(200),
        error: None,
        elapsed: Duration::ZERO,
    });
    m.l2("get", "hit");
    m.webhook("accepted");
    m.access(taskgate::viewer::Outcome::Granted);
    m.secret_reload("TASKGATE_API_KEY_FILE", "changed");
    let text = m.render(Snapshot {
        cache_entries: 0,
        cache_bytes: 0,
        watch_ids: 0,
        watch_streams: 0,
        ..Snapshot::default()
    });
    let mut metrics = BTreeMap::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        families.insert(name.to_owned());
        let name = match kind {
            "counter" if !name.ends_with("_total") => format!("{name}_total"),
            _ => name.to_owned(),
        };
        metrics.insert(name, kind.to_owned());
    }
    // Every name in the source is in the scrape (a new labelled family needs a sample above).
    let unscraped: Vec<_> = names_registered_in_source()
        .into_iter()
        .filter(|n| !families.contains(n) && !families.contains(&format!("{n}_total")))
        .collect();
    assert!(
        unscraped.is_empty(),
        "registered in src/telemetry/metrics.rs but not in the scrape (record one sample of each in \
         registered_metrics): {unscraped:?}"
    );
    metrics
}

#[test]
fn metric_table_lists_exactly_the_registered_metrics_with_their_types() {
    let page = "docs/operating.md";
    let registered = registered_metrics();
    let mut documented = BTreeMap::new();
    for row in table(&read(page), page, &["metric", "type", "labels"]) {
        let names = code_spans(&row[0]);
        assert!(
            !names.is_empty(),
            "{page}: a metric row names no metric: {row:?}"
        );
        let kind = row[1]
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap()
            .to_owned();
        for name in names {
            assert!(
                documented.insert(name.to_owned(), kind.clone()).is_none(),
                "{page}: {name} is listed twice"
            );
        }
    }
    let missing: Vec<_> = registered
        .keys()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    let unknown: Vec<_> = documented
        .keys()
        .filter(|n| !registered.contains_key(*n))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{page}: metrics taskgate registers but the table lacks: {missing:?}; \
         metrics in the table that taskgate does not register: {unknown:?}"
    );
    for (name, kind) in &documented {
        assert_eq!(
            Some(kind),
            registered.get(name),
            "{page}: {name} is documented as a {kind}"
        );
    }
}

#[test]
fn every_metric_name_mentioned_in_the_docs_exists() {
    let registered = registered_metrics();
    let known = |name: &str| {
        registered.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|family| registered.get(family).is_some_and(|k| k == "histogram"))
            })
    };
    let mut seen = 0;
    for file in doc_files() {
        let doc = read(&file);
        for (at, _) in doc.match_indices("taskgate_") {
            let before = doc[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = doc[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            seen += 1;
            assert!(
                known(&name),
                "{file} mentions the metric {name}, which taskgate does not register"
            );
        }
    }
    assert!(seen > 10, "only {seen} metric names found in the docs");
}

/// The OpenTelemetry table of docs/operating.md lists exactly the `OTEL_*` variables
/// `src/telemetry/mod.rs` reads (outside its tests). A cell may abbreviate a signal-specific
/// variable after the generic one: "`OTEL_EXPORTER_OTLP_TIMEOUT` / `_TRACES_TIMEOUT`".
#[test]
fn opentelemetry_table_lists_exactly_the_variables_taskgate_reads() {
    let page = "docs/operating.md";
    let mut documented = BTreeSet::new();
    for row in table(&read(page), page, &["variable", "effect"]) {
        for span in code_spans(&row[0]) {
            let name = span.split('=').next().unwrap();
            let name = match name.strip_prefix('_') {
                Some(suffix) => format!("OTEL_EXPORTER_OTLP_{suffix}"),
                None => name.to_owned(),
            };
            assert!(
                name.starts_with("OTEL_"),
                "{page}: {span:?} is not an OTEL_ variable"
            );
            documented.insert(name);
        }
    }
    let src = read("src/telemetry/mod.rs");
    let code = src.split("#[cfg(test)]").next().unwrap();
    let read_by_code: BTreeSet<String> = code
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("OTEL_") && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_owned)
        .collect();
    assert!(
        read_by_code.len() > 5,
        "src/telemetry/mod.rs: found only {read_by_code:?}"
    );
    assert_eq!(
        documented, read_by_code,
        "{page}: the OpenTelemetry table differs from the OTEL_* variables src/telemetry/mod.rs reads"
    );
}

// --- route tables ---------------------------------------------------------------------------

/// The paths in the first cell of a route table row: `/task/{id}` in "`GET` `/task/{id}`", and
/// `/healthz` in "`GET /healthz`", with the method when the span carries one.
fn row_paths(cell: &str) -> Vec<(Option<&str>, &str)> {
    code_spans(cell)
        .into_iter()
        .filter_map(|span| match span.split_once(' ') {
            None if span.starts_with('/') => Some((None, span)),
            Some((method, path)) if path.starts_with('/') => Some((Some(method), path)),
            _ => None,
        })
        .collect()
}

#[test]
fn every_public_route_in_the_route_table_is_recognised() {
    let page = "docs/behaviour.md";
    let mut covered = BTreeSet::new();
    let mut max_id_len = None;
    for row in table(&read(page), page, &["request", "answer"]) {
        for (_, path) in row_paths(&row[0]) {
            let concrete = path.replace("{id}", EXAMPLE_ID);
            let parsed = route::parse(&concrete);
            match parsed {
                Route::Read(key) | Route::Events(key) => assert_eq!(key.id(), EXAMPLE_ID, "{path}"),
                Route::Webhook => {}
                Route::BadId(_) | Route::NotFound => {
                    panic!("{page}: the route {path} ({concrete}) parses as {parsed:?}")
                }
            }
            covered.insert(parsed.as_str());
        }
        for span in code_spans(&row[0]) {
            if let Some(rest) = span.strip_prefix("^[A-Za-z0-9-]{1,") {
                max_id_len = rest.split('}').next().and_then(|n| n.parse::<usize>().ok());
            }
        }
    }
    // Every route the parser knows is in the table.
    for name in ["task", "task_events", "asset", "asset_events", "webhook"] {
        assert!(
            covered.contains(name),
            "{page}: the route table has no {name} route"
        );
    }
    // The documented id pattern is the parser's.
    let n = max_id_len.unwrap_or_else(|| panic!("{page}: the route table gives no id pattern"));
    assert_eq!(n, route::MAX_ID_LEN, "{page}: the id pattern's length");
    assert!(route::is_valid_id(&"a".repeat(n)) && !route::is_valid_id(&"a".repeat(n + 1)));
}

#[tokio::test]
async fn every_admin_route_in_the_admin_table_answers_as_documented() {
    let page = "docs/operating.md";
    let rows = table(&read(page), page, &["route", "answer"]);
    let mock = MockUpstream::start().await;
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let mut checked = 0;
    for row in &rows {
        let paths = row_paths(&row[0]);
        assert_eq!(
            paths.len(),
            1,
            "{page}: one `METHOD /path` per admin row: {row:?}"
        );
        let (method, path) = paths[0];
        let method = method.unwrap_or_else(|| panic!("{page}: the admin row {path} has no method"));
        let path = path.replace("{id}", EXAMPLE_ID);
        // The status the answer cell gives first, if it gives one.
        let documented = row[1]
            .split(|c: char| !c.is_ascii_digit())
            .find(|n| n.len() == 3)
            .map(|n| n.parse::<u16>().unwrap());
        let got = c.send(tg.admin_addr(), method, &path, &[]).await.status;
        match documented {
            Some(code) => assert_eq!(got.as_u16(), code, "{page}: {method} {path}"),
            None => assert!(got.is_success(), "{page}: {method} {path} answered {got}"),
        }
        // "the public listener does not serve admin routes"
        let public = c.send(tg.public_addr(), method, &path, &[]).await.status;
        assert!(
            public == StatusCode::NOT_FOUND || public == StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} on the public listener answered {public}"
        );
        checked += 1;
    }
    assert_eq!(
        checked, 5,
        "{page}: the admin table should list the five admin routes"
    );
}

// --- links ----------------------------------------------------------------------------------

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated heading gets `-1`, `-2`, …).
fn anchors(doc: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(doc) {
        let level = line.chars().take_while(|&c| c == '#').count();
        if level == 0 || level > 6 || !line[level..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[level..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` outside code, with their line numbers.
fn links(doc: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(doc) {
        // Drop inline code: a `](` inside backticks is not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after
                .find(')')
                .unwrap_or_else(|| panic!("line {n}: unclosed link"));
            out.push((n, after[..end].trim().to_owned()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in doc_files() {
        let doc = read(&file);
        let dir = Path::new(&file).parent().unwrap().to_path_buf();
        for (line, target) in links(&doc) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let (rel, text) = if path.is_empty() {
                (file.clone(), Some(doc.clone()))
            } else {
                let rel = dir.join(path);
                let abs = repo().join(&rel);
                if !abs.exists() {
                    broken.push(format!("{file}:{line}: {target}: no such file"));
                    continue;
                }
                (
                    rel.to_string_lossy().into_owned(),
                    path.ends_with(".md")
                        .then(|| fs::read_to_string(&abs).unwrap()),
                )
            };
            if let Some(anchor) = anchor {
                match text {
                    Some(text) if anchors(&text).contains(anchor) => {}
                    Some(_) => broken.push(format!(
                        "{file}:{line}: {target}: no heading #{anchor} in {rel}"
                    )),
                    None => broken.push(format!(
                        "{file}:{line}: {target}: an anchor into a file that is not Markdown"
                    )),
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_links_every_docs_page() {
    let readme = read("README.md");
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|(_, t)| t.split('#').next().unwrap().to_owned())
        .collect();
    for page in doc_files().into_iter().skip(1) {
        assert!(linked.contains(&page), "README.md does not link {page}");
    }
}

#[test]
fn the_readme_first_screen_keeps_the_two_commands() {
    let readme = read("README.md");
    let first_block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README.md has a sh block");
    let commands: Vec<&str> = first_block
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .collect();
    assert_eq!(commands, ["cargo run --release -- --demo", "bash .ci/run"]);
}
