"""Records what taskgate answers for PREFIX0 .. PREFIX{N-1} (status, headers, body) as the
canned answers of the bare-hyper ceiling (bench/compare/ceiling).

  capture.py PORT PREFIX N OUT.json
`date` and `content-length` are left out: hyper writes them itself. Everything else taskgate
sent (x-cache, etag, cache-control, age, x-request-id, …) is replayed byte for byte.
"""
import http.client
import json
import sys

port, prefix, n, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
answers = {}
for i in range(n):
    path = f"{prefix}{i}"
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    answers[path] = {
        "status": r.status,
        "headers": [[k.lower(), v] for k, v in r.getheaders()
                    if k.lower() not in ("date", "content-length")],
        "body": body.decode(),
    }
json.dump(answers, open(out, "w"))
