"""A scriptable stand-in for the Studio task API, for the soak run (stdlib only).

GET /api/task/{id}:
  done-*     200 completed (cacheable)      run-*   200 running (passed through)
  missing-*  404                            err-*   500
  slow-*     200 running after 3 s (past taskgate's timeout in the soak)
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAD = "x" * 1200  # realistic body size (~1.5 KB)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else header and body writes meet delayed ACKs (40 ms)

    def log_message(self, *args):
        pass

    def do_GET(self):
        task_id = self.path.rsplit("/", 1)[-1]
        kind = task_id.split("-", 1)[0]
        status, phase = 200, None
        if kind == "done":
            phase = "completed"
        elif kind == "run":
            phase = "running"
        elif kind == "slow":
            time.sleep(3)
            phase = "running"
            # taskgate's 1 s timeout has closed the connection by now.
        elif kind == "err":
            status = 500
        else:
            status = 404
        if phase:
            body = json.dumps({"id": task_id, "type": "upload", "pad": PAD,
                               "status": {"phase": phase, "updatedAt": 1}}).encode()
        else:
            body = b'{"errors":["not found"]}' if status == 404 else b'{"errors":["boom"]}'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # taskgate gave up on a slow answer: expected in the soak


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
