"""Reads bench/compare.sh's results directory; prints the side-by-side report and the targets.

Exit status 1 when a target is missed (compare.sh --strict passes it on).
Usage: report.py RESULTS_DIR
"""
import glob
import json
import math
import os
import re
import sys
import time

res = sys.argv[1]


def load(name):
    with open(os.path.join(res, name)) as f:
        return json.load(f)


def text(name):
    with open(os.path.join(res, name)) as f:
        return f.read()


def exists(name):
    return os.path.exists(os.path.join(res, name))


run, machine = load("run.json"), load("machine.json")
UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(name):
    t = text(name + ".wrk.txt")

    def lat(q):
        m = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
        return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")

    m = re.search(r"(\d+) requests in", t)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    out = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)),
           "requests": int(m.group(1)), "p50": lat(50), "p99": lat(99),
           "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)}
    if exists(name + ".cpu0.json"):
        c0, c1 = load(name + ".cpu0.json"), load(name + ".cpu1.json")
        out["cpu_us"] = (c1["cpu_s"] - c0["cpu_s"]) * 1e6 / max(1, out["requests"])
        # Kernel time: the same syscalls cost any proxy about the same (older results lack it).
        out["sys_us"] = (c1.get("sys_s", float("nan")) - c0.get("sys_s", float("nan"))) * 1e6 / max(1, out["requests"])
    return out


def oha(name):
    d = load(name + ".oha.json")
    p = d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    # Requests still in flight when -z ends are "aborted due to deadline": not errors.
    errors = sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k) + \
        sum(v for k, v in codes.items() if not k.startswith("2"))
    return {"rps": d["summary"]["requestsPerSec"], "p50": p["p50"] * 1e3, "p99": p["p99"] * 1e3,
            "p999": p["p99.9"] * 1e3, "errors": errors}


def metric(metrics_text, name):
    """The sum of the samples of `name`, or of `name{k="v",...}`: those whose labels include
    every pair given (whatever other labels they carry)."""
    base, _, want = name.partition("{")
    pairs = re.findall(r'(\w+)="([^"]*)"', want)
    total = 0.0
    for line in metrics_text.splitlines():
        if not (line.startswith(base + " ") or line.startswith(base + "{")):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
        if all(labels.get(k) == v for k, v in pairs):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ratio(a, b, digits=2):
    """a/b as "1.23x". The targets ask for three digits, cut rather than rounded: a figure
    shown at or above its threshold has met it (0.8497 is 0.849x, not 0.85x)."""
    if not b or a != a or b != b:  # x != x: NaN
        return "-"
    if digits == 2:
        return f"{a / b:.2f}x"
    return f"{math.floor(a / b * 10**digits) / 10**digits:.{digits}f}x"


def ms(v):
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def table(head, rows):
    cols = [head] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(head))]
    line = lambda r: "  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                      for i, (c, w) in enumerate(zip(r, widths)))
    print(line(head))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


targets = []


def target(name, ok, figures):
    targets.append((name, "PASS" if ok else "MISS", figures))


def numbered(prefix, suffix):
    """prefix-1.suffix, prefix-2.suffix, ... (not prefix-log-1.suffix)."""
    names = (os.path.basename(f)[:-len(suffix)]
             for f in glob.glob(os.path.join(res, prefix + "-*" + suffix)))
    return sorted(n for n in names if re.fullmatch(re.escape(prefix) + r"-\d+", n))


def median(runs, key):
    """The middle round by `key` (of an even count, the lower middle)."""
    return sorted(runs, key=lambda r: r[key])[(len(runs) - 1) // 2]


def best(prefix):
    """wrk rounds: the median round by req/s, and all."""
    runs = [wrk(n) for n in numbered(prefix, ".wrk.txt")]
    return median(runs, "rps"), runs


def best_rate(prefix, least_disturbed=False):
    """Constant-rate rounds: the median round by p99 (or the one with the lowest p99), and all."""
    runs = [oha(n) for n in numbered(prefix, ".oha.json")]
    return (min(runs, key=lambda r: r["p99"]) if least_disturbed else median(runs, "p99")), runs


def rounds(runs, key):
    return " / ".join(ms(r[key]) for r in runs)


busy0, busy1 = load("busy-start.json"), load("busy-end.json")
print()
print(f"taskgate {machine['taskgate']} ({machine['commit']}{', uncommitted changes' if machine['dirty'] else ''})"
      f" vs nginx {machine['nginx']}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
print(f"machine: {machine['nproc']} x {machine['cpu']}, {machine['mem_gib']} GiB, Linux {machine['kernel']};"
      f" wrk {machine['wrk']}, oha {machine['oha']}")
print(f"load average at start {busy0['loadavg']}, at end {busy1['loadavg']}; other busy processes:"
      f" {', '.join(busy0['busy'] + busy1['busy']) or 'none seen'}")
print("nginx: worker_processes auto (= nproc), proxy_cache on tmpfs, proxy_cache_lock on, access_log off"
      " (on in (a'));\ntaskgate: one single-threaded tokio runtime per core (= nproc workers), TASKGATE_LOG=warn (no access events;"
      " the default, info, in (a')).")
print("The load generator, the proxies and the upstreams share the same cores.")
bodies = load("bodies.json")
print(f"Bodies: completed tasks {bodies['done']} B on average, running {bodies['run']} B.")

# (a)
tg, tg_runs = best("hit-taskgate")
ng, ng_runs = best("hit-nginx")
hy, hy_runs = best("hit-hyper")
print(f"\n(a) cache hits, access logs off on both, {run['conns']} connections, {run['threads']} wrk threads, {run['hit_d']} s,"
      f" {len(tg_runs)} interleaved round(s), the median round (by req/s) shown; ids cycle over 1000 cached tasks;"
      f"\n  'bare hyper': a hyper 1 server replaying taskgate's hit answers byte for byte (the ceiling)")
rows = [["req/s", f"{tg['rps']:.0f}", f"{ng['rps']:.0f}", ratio(tg["rps"], ng["rps"]), f"{hy['rps']:.0f}",
         ratio(tg["rps"], hy["rps"])],
        ["p50 ms", ms(tg["p50"]), ms(ng["p50"]), ratio(tg["p50"], ng["p50"]), ms(hy["p50"]), ratio(tg["p50"], hy["p50"])],
        ["p99 ms", ms(tg["p99"]), ms(ng["p99"]), ratio(tg["p99"], ng["p99"]), ms(hy["p99"]), ratio(tg["p99"], hy["p99"])],
        ["server CPU us/request", f"{tg['cpu_us']:.1f}", f"{ng['cpu_us']:.1f}",
         ratio(tg["cpu_us"], ng["cpu_us"]), f"{hy['cpu_us']:.1f}", ratio(tg["cpu_us"], hy["cpu_us"])],
        ["errors", tg["errors"], ng["errors"], "", hy["errors"], ""]]
if len(tg_runs) > 1:
    rows.insert(1, ["req/s, each round", " / ".join(f"{r['rps']:.0f}" for r in tg_runs),
                    " / ".join(f"{r['rps']:.0f}" for r in ng_runs), "",
                    " / ".join(f"{r['rps']:.0f}" for r in hy_runs), ""])
table(["wrk (max throughput)", "taskgate", "nginx", "taskgate/nginx", "bare hyper", "taskgate/hyper"], rows)

# (a') as shipped
sh, sh_runs = best("ship-hit-taskgate")
sn, sn_runs = best("ship-hit-nginx")
ph, ph_runs = best("ship-pass-taskgate")
pn, pn_runs = best("ship-pass-nginx")
lines = load("ship-lines.json")
sm = text("ship-taskgate.metrics")
dropped = metric(sm, "taskgate_log_events_dropped_total")
served = metric(sm, "taskgate_requests_total")
print(f"\n(a') as shipped, access logs on: taskgate's default (TASKGATE_LOG=info, one JSON event per request on stdout)"
      f"\n  and nginx's (access_log, combined format), both to a file on tmpfs; {len(sh_runs)} interleaved round(s) of"
      f" {run['hit_d']} s each, median shown.\n  Pass-through: running tasks (never cached), wrk at max throughput through"
      f" taskgate vs nginx proxy_pass (no cache); server CPU excludes the upstream")
rows = []
for label, t, n, tr, nr in (("hits", sh, sn, sh_runs, sn_runs), ("pass-through", ph, pn, ph_runs, pn_runs)):
    rows += [[f"{label}: req/s", f"{t['rps']:.0f}", f"{n['rps']:.0f}", ratio(t["rps"], n["rps"])],
             [f"{label}: req/s, each round", " / ".join(f"{r['rps']:.0f}" for r in tr),
              " / ".join(f"{r['rps']:.0f}" for r in nr), ""],
             [f"{label}: p99 ms", ms(t["p99"]), ms(n["p99"]), ratio(t["p99"], n["p99"])],
             [f"{label}: server CPU us/request", f"{t['cpu_us']:.1f}", f"{n['cpu_us']:.1f}", ratio(t["cpu_us"], n["cpu_us"])],
             [f"{label}: of it in the kernel", f"{t['sys_us']:.1f}", f"{n['sys_us']:.1f}", ratio(t["sys_us"], n["sys_us"])],
             [f"{label}: errors", t["errors"], n["errors"], ""]]
table(["as shipped", "taskgate", "nginx", "taskgate/nginx"], rows)
print(f"  log lines: taskgate wrote {lines['taskgate_access_events']:.0f} access events for {served:.0f} requests"
      f" and dropped {dropped:.0f} (taskgate_log_events_dropped_total); nginx wrote {lines['nginx_lines']} lines")
(th, th_runs), (nh, nh_runs) = best_rate("hit-taskgate"), best_rate("hit-nginx")
print(f"\n  oha at a constant {run['rate']} req/s (half nginx's median max), {run['rate_d']} s, latency-corrected;"
      f" the median round (by p99) shown")
table(["constant rate", "taskgate", "nginx", "taskgate/nginx"],
      [["achieved req/s", f"{th['rps']:.0f}", f"{nh['rps']:.0f}", ""],
       ["p99 ms, each round", rounds(th_runs, "p99"), rounds(nh_runs, "p99"), ""],
       ["p50 ms", ms(th["p50"]), ms(nh["p50"]), ratio(th["p50"], nh["p50"])],
       ["p99 ms", ms(th["p99"]), ms(nh["p99"]), ratio(th["p99"], nh["p99"])],
       ["p99.9 ms", ms(th["p999"]), ms(nh["p999"]), ratio(th["p999"], nh["p999"])],
       ["errors", th["errors"], nh["errors"], ""]])
target("hits, logs off: >= 1.3x nginx req/s, p99 and CPU/request below nginx's",
       tg["rps"] >= 1.3 * ng["rps"] and tg["p99"] <= ng["p99"] and th["p99"] <= nh["p99"]
       and tg["cpu_us"] < ng["cpu_us"],
       f"{tg['rps']:.0f} vs {ng['rps']:.0f} req/s ({ratio(tg['rps'], ng['rps'], 3)}); p99 {ms(tg['p99'])} vs "
       f"{ms(ng['p99'])} ms at max, {ms(th['p99'])} vs {ms(nh['p99'])} ms at {run['rate']}/s;"
       f" CPU {tg['cpu_us']:.1f} vs {ng['cpu_us']:.1f} us/req")
target("hits, logs off: >= 0.85x a bare hyper server", tg["rps"] >= 0.85 * hy["rps"],
       f"{tg['rps']:.0f} vs {hy['rps']:.0f} req/s ({ratio(tg['rps'], hy['rps'], 3)});"
       f" CPU {tg['cpu_us']:.1f} vs {hy['cpu_us']:.1f} us/req")
target("hits as shipped: >= 1.3x nginx as shipped, p99 and CPU/request below",
       sh["rps"] >= 1.3 * sn["rps"] and sh["p99"] <= sn["p99"] and sh["cpu_us"] < sn["cpu_us"],
       f"{sh['rps']:.0f} vs {sn['rps']:.0f} req/s ({ratio(sh['rps'], sn['rps'], 3)}); p99 {ms(sh['p99'])} vs"
       f" {ms(sn['p99'])} ms; CPU {sh['cpu_us']:.1f} vs {sn['cpu_us']:.1f} us/req; {dropped:.0f} log lines dropped")
target("pass-through as shipped: >= 1.2x nginx proxy_pass, p99 and CPU/request below",
       ph["rps"] >= 1.2 * pn["rps"] and ph["p99"] <= pn["p99"] and ph["cpu_us"] < pn["cpu_us"],
       f"{ph['rps']:.0f} vs {pn['rps']:.0f} req/s ({ratio(ph['rps'], pn['rps'], 3)}); p99 {ms(ph['p99'])} vs"
       f" {ms(pn['p99'])} ms; CPU {ph['cpu_us']:.1f} vs {pn['cpu_us']:.1f} us/req"
       f" (kernel {ph['sys_us']:.1f} vs {pn['sys_us']:.1f})")

# (b)
(d, d_runs), (t, t_runs), (n, n_runs) = (best_rate("pass-" + w, True) for w in ("direct", "taskgate", "nginx"))
delta = lambda name: metric(text("pass-after.metrics"), name) - metric(text("pass-before.metrics"), name)
calls = delta("taskgate_upstream_requests_total")
passed = delta('taskgate_requests_total{route="task",status="200",cache="PASS"}')
print(f"\n(b) pass-through of running tasks (1000 ids), oha at a constant {run['pass_rate']} req/s,"
      f" {run['pass_d']} s, 8 connections, round with the lowest p99 shown; taskgate made {calls:.0f} upstream calls for {passed:.0f} PASS answers")
table(["latency ms", "upstream direct", "via taskgate", "added", "via nginx (no cache)", "added"],
      [[q, ms(d[k]), ms(t[k]), f"+{t[k] - d[k]:.3f}", ms(n[k]), f"+{n[k] - d[k]:.3f}"]
       for q, k in (("p50", "p50"), ("p99", "p99"), ("p99.9", "p999"))] +
      [["p50, each round", rounds(d_runs, "p50"), rounds(t_runs, "p50"), "", rounds(n_runs, "p50"), ""]] +
      [["errors", d["errors"], t["errors"], "", n["errors"], ""]])
added = t["p50"] - d["p50"]
target("pass-through adds < 0.5 ms p50", added < 0.5,
       f"+{added:.3f} ms p50 ({ms(d['p50'])} -> {ms(t['p50'])}); nginx proxy_pass adds +{n['p50'] - d['p50']:.3f} ms")

# (c)
print(f"\n(c) coalescing: {run['burst_n']} simultaneous requests for one cold id, upstream answers after"
      f" {run['slow_delay'] * 1000:.0f} ms")
rows, ok, calls = [], True, {}
for kind, label in (("done", "completed task"), ("run", "running task")):
    row = [label]
    for who in ("taskgate", "nginx"):
        b = load(f"burst-{who}-{kind}.json")
        c = load(f"burst-{who}-{kind}.calls.json").get(f"{kind}-cold-{who}", 0)
        calls[f"{kind}-cold-{who}"] = c
        nxt = text(f"burst-{who}-{kind}.next").strip() or "-"
        row += [str(c), f"{b['p50_ms']:.0f} / {b['max_ms']:.0f}", nxt]
        if who == "taskgate":
            ok = ok and c == 1 and b["statuses"] == {"200": run["burst_n"]}
    rows.append(row)
table(["", "taskgate calls", "p50/max ms", "next poll", "nginx calls", "p50/max ms", "next poll"], rows)
print("  'next poll': x-cache of one more request after the burst. nginx cannot read the phase, so"
      " it keeps a running task\n  for proxy_cache_valid (24 h here): every later poll gets the stale"
      " 'running' answer. taskgate passes it (PASS).")
target("one upstream call per cold id", ok,
       "taskgate: " + ", ".join(f"{calls.get(f'{k}-cold-taskgate', 0)} call ({k})" for k in ("done", "run")) +
       "; nginx: " + ", ".join(f"{calls.get(f'{k}-cold-nginx', 0)} ({k})" for k in ("done", "run")))

# (d)
idle, full = load("mem-taskgate-idle.json"), load("mem-taskgate-full.json")
m = text("mem-taskgate.metrics")
entries, cbytes = metric(m, "taskgate_cache_entries"), metric(m, "taskgate_cache_bytes")
fill_t, fill_n = oha("fill-taskgate"), oha("fill-nginx")
nb, nf, nc = load("mem-nginx-before.json"), load("mem-nginx-full.json"), load("mem-nginx-cache.json")
bound_kib = (1.25 * cbytes) / 1024 + 16 * 1024
print(f"\n(d) memory: {run['fill_n']} distinct completed tasks ({entries:.0f} cached) fetched through"
      f" each proxy at {run['conns']} connections")
table(["", "taskgate", "nginx"],
      [["cold-miss throughput req/s", f"{fill_t['rps']:.0f}", f"{fill_n['rps']:.0f}"],
       ["idle RSS (fresh)", mib(idle["rss_kib"]), f"{mib(nb['pss_kib'])} PSS (all workers, 1000 hot ids cached)"],
       # Most of an idle RSS is the binary's own pages, mapped from the page cache: how many
       # depends on what the page cache holds (about 1 MiB between two copies of one binary).
       ["  of which anonymous / file", f"{mib(idle.get('anon_kib', 0))} / {mib(idle.get('file_kib', 0))}", ""],
       ["RSS after the fill", mib(full["rss_kib"]) + f" (peak {mib(full['hwm_kib'])})",
        f"{mib(nf['pss_kib'])} PSS + cache files on tmpfs {nc['used_bytes'] / 2**20:.0f} MiB"
        f" ({nc['apparent_bytes'] / 2**20:.0f} MiB of data)"],
       ["growth per cached task", f"{(full['rss_kib'] - idle['rss_kib']) * 1024 / max(1, entries):.0f} B",
        f"{((nf['pss_kib'] - nb['pss_kib']) * 1024 + nc['used_bytes']) / max(1, nc['files']):.0f} B (PSS + tmpfs)"],
       ["taskgate_cache_bytes (weighted)", f"{cbytes / 2**20:.1f} MiB ({cbytes / max(1, entries):.0f} B/entry)", ""]])
target("RSS <= 1.25 x cached bytes + 16 MiB", full["rss_kib"] <= bound_kib,
       f"{mib(full['rss_kib'])} vs bound {mib(bound_kib)} (cached {cbytes / 2**20:.1f} MiB in {entries:.0f} entries)")
target("idle RSS < 10 MiB", idle["rss_kib"] < 10 * 1024,
       f"{mib(idle['rss_kib'])} ({mib(idle.get('anon_kib', 0))} anonymous, {mib(idle.get('file_kib', 0))} file-backed)")

# (e)
st = load("startup.json")
ready = sorted(st["ready_ms"])
print(f"\n(e) start-up to /readyz 200: median {ready[len(ready) // 2]:.1f} ms (runs: "
      f"{', '.join(f'{x:.1f}' for x in st['ready_ms'])} ms); RSS at ready"
      f" {', '.join(mib(x) for x in st['rss_ready_kib'])}, 1 s later {', '.join(mib(x) for x in st['rss_idle_kib'])};"
      f" release binary {machine['binary_bytes'] / 2**20:.1f} MiB ({machine['binary_bytes']} B)")

print("\nTargets")
table(["target", "result", "figures"], [[a, b, c] for a, b, c in targets])
print(f"\ncompare: {sum(1 for t in targets if t[1] == 'PASS')} passed,"
      f" {sum(1 for t in targets if t[1] == 'MISS')} missed; run took {run['seconds']} s")
json.dump({"targets": targets}, open(os.path.join(res, "summary.json"), "w"))
sys.exit(0 if all(t[1] == "PASS" for t in targets) else 1)
