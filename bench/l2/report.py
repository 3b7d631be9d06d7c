"""Turns bench/l2.sh's measurements (a JSON-lines file) into one table (stdlib only)."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| measurement | path | load | requests/s | p50 (ms) | p99 (ms) | upstream calls | notes |")
print("|---|---|---|---:|---:|---:|---:|---|")
for r in rows:
    rps = "–" if r.get("rps") is None else f"{r['rps']:,.0f}"
    f = lambda x: "–" if x is None else f"{x:.2f}"
    print(f"| {r['name']} | {r['path']} | {r['load']} | {rps} | {f(r['p50_ms'])} | {f(r['p99_ms'])} "
          f"| {r['upstream_calls']} | {r.get('notes', '')} |")

# The point of the second level: B answered every id A had fetched without calling the API.
b = [r for r in rows if r["name"].startswith("2.")]
if b and all(r["upstream_calls"] == 0 and "HIT" in r["notes"] and "MISS" not in r["notes"] for r in b):
    print("\nl2: OK: B served every id filled through A from Redis, with 0 API calls")
elif b:
    print("\nl2: FAILED: B went to the API (or missed) for ids already in Redis")
    sys.exit(1)
