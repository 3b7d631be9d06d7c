"""Offline check of deploy/grafana/taskgate.json against the metrics the binary exports.

1. The dashboard is a well-formed Grafana dashboard model: unique panel ids, every panel a
   Prometheus query on the ${datasource} variable, grid positions inside 24 columns and not
   overlapping.
2. Every `taskgate_*` name in its PromQL (panel targets and template variable queries) is a
   sample name the binary exports: the names come from a running `taskgate --demo` (on free
   loopback ports, nothing else reached) after one request of each kind, read from its
   /metrics (`# TYPE` lines, expanded to the sample names: `_bucket`, `_sum`, `_count` for
   histograms, and every sample line). The check fails if fewer families appear than
   `registry.register` calls in src/, since then a family went unobserved.
3. Every label name in a matcher `taskgate_x{label…}` or a `by (…)` clause is a label the
   binary puts on that metric (or `instance`/`job`, which Prometheus adds, or `le`).
4. Negative controls: the same validation must reject a copy with a misspelt metric name and a
   copy with an unknown label.

Usage: grafana_check.py TASKGATE_BIN [DASHBOARD]. Exit status 1 on any problem, 2 on a setup error.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "taskgate.json"

# Names the dashboard may use before the binary exports them, each with why. A name here is
# still validated as soon as the binary exports it; remove it then.
EXPECTED_SOON: dict[str, str] = {}
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"instance", "job"}
# src/demo task ids: a finished one and one the demo does not know.
DEMO_TASK = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69"
UNKNOWN_TASK = "00000000-0000-4000-8000-00000000dead"

NAME = re.compile(r"\btaskgate_[A-Za-z0-9_]+")
MATCHER = re.compile(r"\b(taskgate_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
BY = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


class SetupError(Exception):
    pass


# ---- what the binary exports --------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, str]:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        con.request(method, path, body=body, headers=headers or {})
        resp = con.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        con.close()


def open_events(port: int, path: str, seconds: float) -> None:
    """Holds an event stream open for a while (a watch), then hangs up."""
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds)
    try:
        con.request("GET", path, headers={"Accept": "text/event-stream"})
        resp = con.getresponse()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if not resp.fp.readline():
                    break
            except TimeoutError:
                break
    finally:
        con.close()


def scrape(binary: Path) -> str:
    """/metrics of `taskgate --demo` after one request of each kind."""
    public, admin, closed = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGATE_") and k != "RUST_LOG"}
    env |= {
        "TASKGATE_LISTEN": f"127.0.0.1:{public}",
        "TASKGATE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        # A loopback port nobody listens on: every Redis operation fails fast and is counted.
        "TASKGATE_REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        "TASKGATE_WEBHOOK_SECRET": "grafana-check-webhook-secret",
        "TASKGATE_LOG": "warn",
    }
    with tempfile.TemporaryDirectory(prefix="taskgate-grafana-check-") as work:
        # A secret from a file, re-read on SIGHUP below: the reload counter gets its sample.
        admin_token = Path(work) / "admin-token"
        admin_token.write_text("grafana-check-admin-token\n")
        env["TASKGATE_ADMIN_TOKEN_FILE"] = str(admin_token)
        proc = subprocess.Popen(
            [str(binary), "--demo"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    raise SetupError(f"taskgate exited ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
                try:
                    if request(admin, "GET", "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SetupError("taskgate did not answer /readyz within 20 s")
                time.sleep(0.1)
            for path in (f"/task/{DEMO_TASK}", f"/task/{DEMO_TASK}", f"/task/{UNKNOWN_TASK}", "/task/.."):
                request(public, "GET", path)
            open_events(public, f"/task/{DEMO_TASK}/events", 1.5)
            request(public, "POST", "/webhooks/livepeer", b"{}", {"Livepeer-Signature": "t=1,v1=00"})
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            status, text = request(admin, "GET", "/metrics")
            if status != 200:
                raise SetupError(f"/metrics answered {status}")
            return text
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def exported(metrics: str) -> tuple[set[str], dict[str, set[str]], int]:
    """Sample names, the label names seen on each, and the number of families."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    families = 0
    for line in metrics.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            families += 1
            if kind == "histogram":
                names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
            else:
                names.add(family)
        elif line and not line.startswith("#"):
            m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? \S+$", line)
            if not m:
                continue
            names.add(m[1])
            labels.setdefault(m[1], set()).update(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', m[2] or ""))
    return names, labels, families


def registered_families() -> int:
    """`.register("name", …)` calls in src/: the families the binary can export."""
    return sum(len(re.findall(r'\.register\(\s*"', p.read_text())) for p in (ROOT / "src").rglob("*.rs"))


# ---- the dashboard --------------------------------------------------------------------------


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and template variable query."""
    out = []
    panels = list(dashboard.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))
    for p in panels:
        for t in p.get("targets", []):
            out.append((f"panel {p.get('id')} {p.get('title')!r} target {t.get('refId')}", t.get("expr", "")))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else q or ""
            out.append((f"variable {v.get('name')}", q))
    return out


def structure(dashboard: dict) -> list[str]:
    problems = []
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dashboard:
            problems.append(f"dashboard has no {key!r}")
    panels = dashboard.get("panels", [])
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        problems.append(f"panel ids repeat: {ids}")
    variables = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
    if "datasource" not in variables:
        problems.append("no 'datasource' template variable")
    boxes = []
    for p in panels:
        g = p.get("gridPos", {})
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] < 0 or g["x"] + g["w"] > 24:
            problems.append(f"{where}: gridPos {g} is not inside 24 columns")
            continue
        for other, og in boxes:
            if g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"] and g["y"] < og["y"] + og["h"]:
                if og["y"] < g["y"] + g["h"]:
                    problems.append(f"{where} overlaps {other}")
        boxes.append((where, g))
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not ${{datasource}}")
        targets = p.get("targets", [])
        if not targets or not all(t.get("expr", "").strip() for t in targets):
            problems.append(f"{where}: no PromQL target, or an empty one")
        if any(t.get("datasource", {}).get("uid") != "${datasource}" for t in targets):
            problems.append(f"{where}: a target's datasource is not ${{datasource}}")
    return problems


def validate(dashboard: dict, names: set[str], labels: dict[str, set[str]]) -> tuple[list[str], set[str], set[str]]:
    """Problems, the names used, and the EXPECTED_SOON names used but not exported."""
    problems = structure(dashboard)
    used: set[str] = set()
    pending: set[str] = set()
    for where, expr in expressions(dashboard):
        found = set(NAME.findall(expr))
        if not found:
            problems.append(f"{where}: no taskgate_* metric in {expr!r}")
        used |= found
        for name in sorted(found - names):
            if name in EXPECTED_SOON:
                pending.add(name)
            else:
                problems.append(f"{where}: {name} is not a metric the binary exports")
        allowed_by: set[str] = set(TARGET_LABELS) | {"le"}
        for name in found:
            allowed_by |= labels.get(name, set())
        for name, body in MATCHER.findall(expr):
            if name not in labels:
                continue  # exported without labels, or not exported (reported above)
            for label in MATCHER_LABEL.findall(body):
                if label not in labels[name] | TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(labels[name])})")
        if not found & pending:
            for group in BY.findall(expr):
                for label in filter(None, (s.strip() for s in group.split(","))):
                    if label not in allowed_by:
                        problems.append(f"{where}: label {label!r} is on none of {sorted(found)}")
    return problems, used, pending


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    binary = Path(sys.argv[1]).resolve()
    path = Path(sys.argv[2]) if len(sys.argv) == 3 else DASHBOARD
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"grafana-check: FAIL: {path}: {e}", file=sys.stderr)
        return 1
    if not binary.is_file():
        print(f"grafana-check: no taskgate binary at {binary}", file=sys.stderr)
        return 2
    try:
        metrics = scrape(binary)
    except (SetupError, OSError) as e:
        print(f"grafana-check: setup: {e}", file=sys.stderr)
        return 2
    names, labels, families = exported(metrics)
    registered = registered_families()
    print(f"{binary.name} exports {families} metric families ({len(names)} sample names); src/ registers {registered}")
    problems = []
    if registered == 0 or families < registered:
        problems.append(
            f"only {families} of the {registered} registered families appeared in /metrics: "
            "add a request that records the missing one to scrape() in .ci/grafana_check.py"
        )
    found, used, pending = validate(dashboard, names, labels)
    problems += found
    for name in sorted(used):
        state = "NOT YET EXPORTED (allowed: " + EXPECTED_SOON[name] + ")" if name in pending else "exported"
        print(f"  {name}: {state}")
    for name in sorted(set(EXPECTED_SOON) & names):
        print(f"note: {name} is exported now: remove it from EXPECTED_SOON in .ci/grafana_check.py")

    # Negative controls: the same validation must reject a misspelt name and an unknown label.
    for label, mutate in (
        ("a misspelt metric name", lambda e: e.replace("taskgate_requests_total", "taskgate_request_total", 1)),
        (
            "an unknown label",
            lambda e: e.replace("taskgate_upstream_in_flight{", "taskgate_requests_total{shard='1',", 1),
        ),
    ):
        bad = copy.deepcopy(dashboard)
        changed = False
        for p in bad.get("panels", []):
            for t in p.get("targets", []):
                new = mutate(t.get("expr", ""))
                if new != t.get("expr") and not changed:
                    t["expr"], changed = new, True
        if not changed or not validate(bad, names, labels)[0]:
            problems.append(f"negative control: a copy with {label} was not rejected")
    if problems:
        for p in problems:
            print(f"grafana-check: FAIL: {p}", file=sys.stderr)
        return 1
    print(
        f"grafana-check: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
        f"{len(expressions(dashboard))} queries over {len(used)} metric names, all exported "
        f"({len(pending)} expected soon); the negative controls were rejected"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
