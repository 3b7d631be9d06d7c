"""Steady mixed load against taskgate for the soak run (stdlib only).

Prints one JSON sample line every INTERVAL seconds: requests, errors (connection-level),
latency p50/p99 in ms, and taskgate's RSS (KiB) and open descriptors, read from /proc.
Usage: load.py BASE_URL PID DURATION_S INTERVAL_S
"""
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

base, pid, duration, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
u = urllib.parse.urlparse(base)
lock = threading.Lock()
latencies, counts = [], {"requests": 0, "errors": 0}
stop = time.monotonic() + duration


def pick():
    r = random.random()
    if r < 0.55:
        return f"done-{random.randrange(200)}"          # hits once warm
    if r < 0.75:
        return f"run-{random.randrange(50)}"            # passes
    if r < 0.90:
        return f"done-{random.randrange(10**9)}"        # misses: churn far past the cache bound
    if r < 0.95:
        return f"missing-{random.randrange(10**6)}"     # 404s (negatively cached)
    if r < 0.99:
        return f"err-{random.randrange(100)}"           # upstream 500s
    return f"slow-{random.randrange(10**6)}"            # upstream timeouts


def worker():
    conn = None
    while time.monotonic() < stop:
        if conn is None:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        path = "/task/" + pick()
        t0 = time.monotonic()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            ok = True
        except Exception:
            ok = False
            conn.close()
            conn = None
        dt = (time.monotonic() - t0) * 1000
        with lock:
            counts["requests"] += 1
            if ok:
                latencies.append(dt)
            else:
                counts["errors"] += 1
        time.sleep(0.002)


def proc_stats():
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    import os
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
for t in threads:
    t.start()
start = time.monotonic()
while time.monotonic() < stop:
    time.sleep(min(interval, max(0.0, stop - time.monotonic())))
    with lock:
        lat = sorted(latencies)
        latencies.clear()
        n, e = counts["requests"], counts["errors"]
        counts["requests"] = counts["errors"] = 0
    rss, fds = proc_stats()
    p = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None
    print(json.dumps({"t": round(time.monotonic() - start), "requests": n, "errors": e,
                      "p50_ms": p(0.50), "p99_ms": p(0.99), "rss_kib": rss, "fds": fds}), flush=True)
for t in threads:
    t.join(timeout=15)
