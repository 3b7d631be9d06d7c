"""Turns bench/quota.sh's per-scenario JSON files into tables (stdlib only): one for the task
scenarios, one for the asset scenarios, each with its first scenario as the baseline for "saving".
Usage: report.py NAME=FILE.json ...
"""
import json
import sys

rows = []
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    with open(path) as f:
        rows.append((name, json.loads(f.read())))
if not rows:
    sys.exit("report: no scenario ran")


def s(x):
    return "–" if x is None else f"{x:.2f}"


def table(group):
    """One table; its first scenario is the baseline for "saving"."""
    base = group[0][1]["upstream_calls"]
    per = "asset" if group[0][1].get("kind") == "asset" else "task"
    print(f"| scenario | upstream calls | calls / {per} | calls / change | saving vs {group[0][0]} | tab requests | "
          "staleness p50 / p99 / max (s) | finished seen after, p50 / max (s) | "
          "stale answers (worst, s) | tabs wrong: late final / unfinished after done / regressed / missed |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|---|")
    for name, r in group:
        calls = r["upstream_calls"]
        saving = "–" if name == group[0][0] else f"{(1 - calls / base) * 100:.1f}% (÷{base / max(calls, 1):.0f})"
        wrong = (f"**{r['tabs_wrong']}** of {r['tabs']}: {r['tabs_late_final']} / "
                 f"{r['tabs_unfinished_after_done']} ({r['unfinished_after_done']} answers) / "
                 f"{r['tabs_regressed']} / {r['tabs_missed_final']}")
        # The information minimum: one call per status change the API made.
        changes = r["status_changes"]
        print(f"| {name} | {calls} | {calls / r['tasks']:.1f} | {calls / changes:.2f} | {saving} | {r['tab_requests']} | "
              f"{s(r['staleness_p50_s'])} / {s(r['staleness_p99_s'])} / {s(r['staleness_max_s'])} | "
              f"{s(r['final_staleness_p50_s'])} / {s(r['final_staleness_max_s'])} | "
              f"{r['stale_answers']} ({s(r['max_stale_age_s'])}) | {wrong} |")
    print()


# Tasks and assets are separate tables, each against its own baseline.
for kind in ("task", "asset"):
    group = [(n, r) for n, r in rows if r.get("kind", "task") == kind]
    if group:
        table(group)
for name, r in rows:
    extra = {k: r[k] for k in ("upstream_calls_unfinished", "upstream_calls_finished", "x_cache",
                                "sse_events", "reconnects", "errors", "bad_bodies", "seconds")}
    if "proxy_upstream_calls" in r:
        extra["proxy_upstream_calls"] = r["proxy_upstream_calls"]
    if r.get("webhooks_sent"):
        extra["webhooks_sent"] = r["webhooks_sent"]
        extra["webhook_failures"] = r["webhook_failures"]
    if r["errors"]:
        extra["error_samples"] = r["error_samples"]
    print(f"{name}: {json.dumps(extra)}")
