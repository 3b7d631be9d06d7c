"""A stand-in for the Studio task API, for .ci/image-check: HTTPS on the host's loopback.

GET /task/{id}   200 {"id": id, "status": {"phase": "completed", "updatedAt": 1}} when the request
                 carries `Authorization: Bearer <the expected key>`, else 401. Ids starting with
                 `slow-` are answered after --slow seconds (an in-flight request for drain tests).
GET /_calls/{id} {"calls": n}: how many /task/{id} requests arrived (for the check, not taskgate).

Writes the port it listens on to --port-file once it accepts connections.
"""

import argparse
import json
import os
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TASK = re.compile(r"^/task/([A-Za-z0-9-]{1,64})$")
CALLS = re.compile(r"^/_calls/([A-Za-z0-9-]{1,64})$")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--api-key-file", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--slow", type=float, default=3.0)
    ap.add_argument("--lifetime", type=float, default=600.0, help="exit after this many seconds whatever happens")
    opts = ap.parse_args()
    with open(opts.api_key_file, encoding="utf-8") as f:
        expected = f"Bearer {f.read().strip()}"
    calls = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def send_json(self, status, doc):
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if m := CALLS.match(self.path):
                with lock:
                    n = calls.get(m.group(1), 0)
                return self.send_json(200, {"calls": n})
            m = TASK.match(self.path)
            if not m:
                return self.send_json(404, {"errors": ["not found"]})
            task_id = m.group(1)
            with lock:
                calls[task_id] = calls.get(task_id, 0) + 1
            if self.headers.get("authorization") != expected:
                return self.send_json(401, {"errors": ["invalid API key"]})
            if task_id.startswith("slow-"):
                time.sleep(opts.slow)
            return self.send_json(200, {"id": task_id, "status": {"phase": "completed", "updatedAt": 1}})

        def log_message(self, format, *args):  # quiet: the check prints what matters
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(opts.cert, opts.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    stopper = threading.Timer(opts.lifetime, server.shutdown)
    stopper.daemon = True
    stopper.start()
    with open(opts.port_file + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(opts.port_file + ".tmp", opts.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
