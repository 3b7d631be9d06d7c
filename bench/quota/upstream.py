"""A simulated Studio task API for bench/quota.sh and bench/l2.sh (Python 3.11 stdlib, asyncio).

GET /api/task/{id}   the task, as Studio would answer it (Authorization is not checked)
GET /ctl/stats       JSON: calls served (total, while unfinished, after completion, per id)
GET /ctl/schedule    JSON: every task's true timeline (lifecycle mode), for the tabs
GET /ctl/start?t0=T  starts the task clock at time.monotonic() == T (lifecycle mode)

--mode lifecycle: tasks q-<tag>-<i> (i < --tasks) move on a clock: `waiting` for --wait s plus
  a per-task stagger in [0, --stagger], then `running` for --run s (x0.75..1.25 per task) with
  a progress update every --progress-every s, then `completed`. Each change is a version: the
  body carries `v` (0, 1, 2, ...) and `status.updatedAt` (the wall-clock ms of the change), so
  a client can tell exactly which state it was shown and since when it was out of date.
  Before /ctl/start every task is at version 0. Unknown ids: 404.
--mode completed: any id is a completed task (the l2 bench). --latency adds a delay to every
  task call (asyncio.sleep, so calls overlap as they would against the real API).
"""
import argparse
import asyncio
import json
import random
import time
import urllib.parse

PAD = "x" * 700  # with the rest, a body of ~1.2 KB, like a real upload task


def build_schedule(n, wait, run, stagger, progress_every, seed):
    """Per task: a list of (seconds after t0, phase, progress)."""
    out = []
    for i in range(n):
        r = random.Random(f"{seed}:{i}")
        w = wait + r.uniform(0, stagger)
        rd = run * r.uniform(0.75, 1.25)
        changes = [(0.0, "waiting", 0.0), (w, "running", 0.0)]
        t = progress_every
        while progress_every > 0 and t < rd - 0.5:
            changes.append((w + t, "running", round(t / rd, 3)))
            t += progress_every
        changes.append((w + rd, "completed", 1.0))
        out.append([(round(a, 3), p, g) for a, p, g in changes])
    return out


class Api:
    def __init__(self, args):
        self.args = args
        self.t0 = None          # time.monotonic() of the clock's start
        self.wall0 = time.time()
        self.calls = 0
        self.calls_unfinished = 0
        self.calls_finished = 0
        self.per_id = {}
        self.ids = {}
        if args.mode == "lifecycle":
            sched = build_schedule(args.tasks, args.wait, args.run, args.stagger,
                                   args.progress_every, args.seed)
            for i, changes in enumerate(sched):
                self.ids[f"q-{args.tag}-{i}"] = changes

    def version(self, changes, now):
        if self.t0 is None:
            return 0
        el = now - self.t0
        v = 0
        for k, (t, _, _) in enumerate(changes):
            if t <= el:
                v = k
        return v

    def task_body(self, task_id, phase, progress, updated_ms, v):
        created = int(self.wall0 * 1000)
        body = {
            "id": task_id,
            "type": "upload",
            "createdAt": created,
            "scheduledAt": created,
            "inputAssetId": "a" + task_id,
            "outputAssetId": "b" + task_id,
            "params": {"upload": {"url": "https://storage.example.com/in/" + task_id + ".mp4"}},
            "status": {"phase": phase, "progress": progress, "retries": 0, "updatedAt": updated_ms},
            "v": v,
            "pad": PAD,
        }
        if phase == "completed":
            body["output"] = {"upload": {"assetSpec": {"name": task_id, "size": 1234567,
                                                       "hash": [{"hash": "ab" * 16, "algorithm": "md5"}]}}}
        return json.dumps(body, separators=(",", ":")).encode()

    async def task(self, task_id):
        if self.args.latency > 0:
            await asyncio.sleep(self.args.latency)
        now = time.monotonic()
        self.calls += 1
        self.per_id[task_id] = self.per_id.get(task_id, 0) + 1
        if self.args.mode == "completed":
            self.calls_finished += 1
            return 200, self.task_body(task_id, "completed", 1.0, int(self.wall0 * 1000), 0)
        changes = self.ids.get(task_id)
        if changes is None:
            return 404, b'{"errors":["not found"]}'
        v = self.version(changes, now)
        t, phase, progress = changes[v]
        if phase == "completed":
            self.calls_finished += 1
        else:
            self.calls_unfinished += 1
        base = self.wall0 if self.t0 is None else self.wall0 + (self.t0 - self.mono0)
        return 200, self.task_body(task_id, phase, progress, int((base + t) * 1000), v)

    def ctl(self, path, query):
        if path == "/ctl/stats":
            return {"calls": self.calls, "calls_unfinished": self.calls_unfinished,
                    "calls_finished": self.calls_finished, "ids": len(self.per_id),
                    "max_per_id": max(self.per_id.values(), default=0)}
        if path == "/ctl/schedule":
            return {"tasks": self.ids}
        if path == "/ctl/start":
            self.t0 = float(query["t0"][0])
            return {"t0": self.t0}
        return None

    async def handle(self, reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = line.split(" ")
                target = parts[1] if len(parts) > 1 else "/"
                close = b"\r\nconnection: close" in head.lower()
                u = urllib.parse.urlsplit(target)
                if u.path.startswith("/api/task/"):
                    status, body = await self.task(u.path.rsplit("/", 1)[-1])
                else:
                    out = self.ctl(u.path, urllib.parse.parse_qs(u.query))
                    status, body = (200, json.dumps(out).encode()) if out is not None \
                        else (404, b'{"errors":["not found"]}')
                reason = {200: "OK", 404: "Not Found"}[status]
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n{'connection: close' + chr(13) + chr(10) if close else ''}\r\n"
                    .encode() + body)
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["lifecycle", "completed"], default="lifecycle")
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--wait", type=float, default=2.0)
    ap.add_argument("--run", type=float, default=16.0)
    ap.add_argument("--stagger", type=float, default=4.0)
    ap.add_argument("--progress-every", type=float, default=4.0)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--tag", default="x")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every task call")
    args = ap.parse_args()
    api = Api(args)
    api.mono0 = time.monotonic()
    api.wall0 = time.time()
    server = await asyncio.start_server(api.handle, "127.0.0.1", args.port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
