"""Requests each of N task ids once through taskgate at a fixed concurrency, for bench/l2.sh
(Python 3.11 stdlib, asyncio). Prints one JSON object: latency p50/p99/max in ms, x-cache
counts, errors.
Usage: load.py BASE_URL PREFIX N CONCURRENCY
"""
import asyncio
import json
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "quota"))
from tabs import Conn, pct  # noqa: E402


async def main():
    base, prefix, n, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    u = urllib.parse.urlsplit(base)
    queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(f"{prefix}{i}")
    lat, xcache, errors = [], {}, []

    async def worker():
        conn = Conn(u.hostname, u.port)
        while not queue.empty():
            tid = queue.get_nowait()
            t = time.perf_counter()
            try:
                status, hdrs, _ = await conn.get(f"/task/{tid}")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                conn.close()
                continue
            lat.append((time.perf_counter() - t) * 1000)
            x = hdrs.get("x-cache", "-")
            xcache[x] = xcache.get(x, 0) + 1
            if status != 200:
                errors.append(f"status {status}")
        conn.close()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    took = time.perf_counter() - t
    r2 = lambda x: None if x is None else round(x, 2)
    print(json.dumps({"n": n, "concurrency": conc, "seconds": round(took, 2),
                      "p50_ms": r2(pct(lat, 0.5)), "p99_ms": r2(pct(lat, 0.99)),
                      "max_ms": r2(max(lat, default=None)), "x_cache": xcache,
                      "errors": len(errors), "error_samples": errors[:3]}))


asyncio.run(main())
