"""Start-up time to ready, and idle RSS, of the taskgate binary (stdlib only).

Starts BIN RUNS times (environment inherited, fresh loopback ports each time), polls
GET /readyz on the admin port every millisecond until it answers 200, reads VmRSS then and
after IDLE seconds of idleness, sends SIGTERM and waits for the exit.
Prints JSON: ready_ms (each run), rss_ready_kib and rss_idle_kib (each run).
Usage: startup.py BIN RUNS [IDLE_S=1]
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

bin_path, runs = sys.argv[1], int(sys.argv[2])
idle = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ready(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/readyz")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


out = {"ready_ms": [], "rss_ready_kib": [], "rss_idle_kib": []}
for _ in range(runs):
    adm = free_port()
    env = dict(os.environ, TASKGATE_LISTEN=f"127.0.0.1:{free_port()}",
               TASKGATE_ADMIN_LISTEN=f"127.0.0.1:{adm}")
    t0 = time.monotonic()
    p = subprocess.Popen([bin_path], env=env, stdout=subprocess.DEVNULL)
    deadline = t0 + 10
    while not ready(adm):
        if time.monotonic() > deadline or p.poll() is not None:
            p.kill()
            sys.exit("startup: taskgate never became ready")
        time.sleep(0.001)
    out["ready_ms"].append(round((time.monotonic() - t0) * 1000, 1))
    out["rss_ready_kib"].append(rss_kib(p.pid))
    time.sleep(idle)
    out["rss_idle_kib"].append(rss_kib(p.pid))
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=15)
print(json.dumps(out))
