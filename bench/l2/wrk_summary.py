"""Reads `wrk --latency` output (file argument); prints requests/s, p50/p99 (ms), errors as JSON."""
import json, re, sys
t = open(sys.argv[1]).read()
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
def lat(q):
    m = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
    return float(m.group(1)) * unit[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
sock = re.search(r"Socket errors: (.*)", t)
errs = (int(bad.group(1)) if bad else 0)
print(json.dumps({"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)),
                  "p50_ms": lat(50), "p99_ms": lat(99), "errors": errs,
                  "error_samples": sock.group(1) if sock else None}))
