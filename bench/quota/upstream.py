"""A simulated Studio task (or asset) API for bench/quota.sh and bench/l2.sh (Python 3.11 stdlib,
asyncio).

GET /api/task/{id}   the task, as Studio would answer it (Authorization is not checked)
GET /api/asset/{id}  with --kind asset: the asset, `waiting` -> `processing` (progress) -> `ready`
GET /ctl/stats       JSON: calls served (total, while unfinished, after completion, per id)
GET /ctl/schedule    JSON: every task's true timeline (lifecycle mode), for the tabs
GET /ctl/start?t0=T  starts the task clock at time.monotonic() == T (lifecycle mode)

--mode lifecycle: tasks q-<tag>-<i> (i < --tasks) move on a clock: `waiting` for --wait s plus
  a per-task stagger in [0, --stagger], then `running` for --run s (x0.75..1.25 per task) with
  a progress update every --progress-every s, then `completed`. Each change is a version: the
  body carries `v` (0, 1, 2, ...) and `status.updatedAt` (the wall-clock ms of the change), so
  a client can tell exactly which state it was shown and since when it was out of date.
  Before /ctl/start every task is at version 0. Unknown ids: 404.
--kind asset: the same clock for assets (LIVEPEER-ASSETS §2): `waiting`, then `processing` with
  progress updates, then `ready`, served at /api/asset/{id}. With --webhook-url and
  --webhook-secret, every change after /ctl/start is also announced as Studio does, a signed
  POST (`Livepeer-Signature: t=..,v1=<HMAC-SHA256>`) of `asset.updated`, and of `asset.ready`
  too when the asset becomes ready; the asset id is at `payload.asset.id`.
--kind task with --webhook-url: every change is announced as `task.updated`, its snapshot's
  `status.updatedAt` the version's own (as Studio's task events carry it), --webhook-delay s
  after the change. --replica-lag L: a GET answers the state of L s ago, as Studio's
  non-admin reads from a lagging database replica can (a GET just after a webhook may still
  show the previous version).
--mode completed: any id is a completed task (the l2 bench). --latency adds a delay to every
  task call (asyncio.sleep, so calls overlap as they would against the real API).
"""
import argparse
import asyncio
import hashlib
import hmac
import json
import random
import time
import urllib.parse
import uuid

PAD = "x" * 700  # with the rest, a body of ~1.2 KB, like a real upload task


# The phases a task (or an asset) goes through: queued, working (with progress), finished.
PHASES = {"task": ("waiting", "running", "completed"), "asset": ("waiting", "processing", "ready")}


def build_schedule(n, wait, run, stagger, progress_every, seed, kind="task"):
    """Per task (or asset): a list of (seconds after t0, phase, progress)."""
    queued, working, finished = PHASES[kind]
    out = []
    for i in range(n):
        r = random.Random(f"{seed}:{i}")
        w = wait + r.uniform(0, stagger)
        rd = run * r.uniform(0.75, 1.25)
        changes = [(0.0, queued, 0.0), (w, working, 0.0)]
        t = progress_every
        while progress_every > 0 and t < rd - 0.5:
            changes.append((w + t, working, round(t / rd, 3)))
            t += progress_every
        changes.append((w + rd, finished, 1.0))
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
        self.webhooks_sent = 0
        self.webhook_failures = 0
        if args.mode == "lifecycle":
            sched = build_schedule(args.tasks, args.wait, args.run, args.stagger,
                                   args.progress_every, args.seed, args.kind)
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

    def asset_body(self, asset_id, phase, progress, updated_ms, v):
        created = int(self.wall0 * 1000)
        status = {"phase": phase, "updatedAt": updated_ms}
        if phase == "processing":
            status["progress"] = progress
        body = {
            "id": asset_id,
            "name": asset_id + ".mp4",
            "source": {"type": "directUpload"},
            "status": status,
            "userId": "u-quota",
            "createdAt": created,
            "projectId": "p-quota",
            "playbackId": "pb" + asset_id,
            "v": v,
            "pad": PAD,
        }
        if phase == "ready":
            body["size"] = 1234567
            body["videoSpec"] = {"format": "mp4", "duration": 20.0, "bitrate": 1128000}
            body["downloadUrl"] = "https://cdn.example/pb" + asset_id + "/video/download.mp4"
        return json.dumps(body, separators=(",", ":")).encode()

    def body(self, res_id, phase, progress, updated_ms, v):
        if self.args.kind == "asset":
            return self.asset_body(res_id, phase, progress, updated_ms, v)
        return self.task_body(res_id, phase, progress, updated_ms, v)

    def updated_ms(self, t):
        """`status.updatedAt` of a change made t s after the clock's start."""
        base = self.wall0 if self.t0 is None else self.wall0 + (self.t0 - self.mono0)
        return int((base + t) * 1000)

    async def announce(self):
        """Sends Studio's webhook calls for every change after the clock's start."""
        calls = sorted(
            (t, res_id, k)
            for res_id, changes in self.ids.items()
            for k, (t, _, _) in enumerate(changes)
            if k > 0
        )
        for t, res_id, k in calls:
            # After the change, as Studio publishes once its database row changed.
            delay = self.args.webhook_delay
            await asyncio.sleep(max(0.0, self.t0 + t + delay - time.monotonic()))
            phase = self.ids[res_id][k][1]
            if self.args.kind == "task":
                snapshot = {"id": res_id, "status": {"phase": phase,
                                                     "updatedAt": self.updated_ms(t)}}
                events = ["task.updated"]
            else:
                snapshot = {"id": res_id}
                events = ["asset.updated"] + (["asset.ready"] if phase == "ready" else [])
            for event in events:
                asyncio.get_running_loop().create_task(self.post_webhook(event, res_id, snapshot))

    async def post_webhook(self, event, res_id, snapshot):
        url = urllib.parse.urlsplit(self.args.webhook_url)
        now = int(time.time() * 1000)
        body = json.dumps({
            "id": str(uuid.uuid4()), "webhookId": "wh-quota", "createdAt": now, "timestamp": now,
            "event": event, "payload": {self.args.kind: {"id": res_id, "snapshot": snapshot}},
        }, separators=(",", ":")).encode()
        mac = hmac.new(self.args.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        try:
            r, w = await asyncio.open_connection(url.hostname, url.port)
            w.write(
                f"POST {url.path} HTTP/1.1\r\nhost: {url.hostname}:{url.port}\r\n"
                f"content-type: application/json\r\nlivepeer-signature: t={now},v1={mac}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
            await w.drain()
            status = (await r.readline()).split(b" ")[1]
            if status != b"204":
                self.webhook_failures += 1
            self.webhooks_sent += 1
            w.close()
        except (ConnectionError, IndexError):
            self.webhook_failures += 1

    async def task(self, task_id):
        if self.args.latency > 0:
            await asyncio.sleep(self.args.latency)
        now = time.monotonic()
        self.calls += 1
        self.per_id[task_id] = self.per_id.get(task_id, 0) + 1
        if self.args.mode == "completed":
            self.calls_finished += 1
            return 200, self.task_body(task_id, "completed", 1.0, int(self.wall0 * 1000), 0)
        finished = PHASES[self.args.kind][2]
        changes = self.ids.get(task_id)
        if changes is None:
            return 404, b'{"errors":["not found"]}'
        v = self.version(changes, now - self.args.replica_lag)
        t, phase, progress = changes[v]
        if phase == finished:
            self.calls_finished += 1
        else:
            self.calls_unfinished += 1
        return 200, self.body(task_id, phase, progress, self.updated_ms(t), v)

    def ctl(self, path, query):
        if path == "/ctl/stats":
            return {"calls": self.calls, "calls_unfinished": self.calls_unfinished,
                    "calls_finished": self.calls_finished, "ids": len(self.per_id),
                    "max_per_id": max(self.per_id.values(), default=0),
                    "webhooks_sent": self.webhooks_sent, "webhook_failures": self.webhook_failures}
        if path == "/ctl/schedule":
            return {"tasks": self.ids}
        if path == "/ctl/start":
            self.t0 = float(query["t0"][0])
            if self.args.webhook_url:
                self.announcer = asyncio.get_running_loop().create_task(self.announce())
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
                if u.path.startswith(f"/api/{self.args.kind}/"):
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
    ap.add_argument("--kind", choices=["task", "asset"], default="task")
    ap.add_argument("--webhook-url", default="", help="announce changes here")
    ap.add_argument("--webhook-secret", default="")
    ap.add_argument("--webhook-delay", type=float, default=0.01,
                    help="seconds from a change to its webhook call")
    ap.add_argument("--replica-lag", type=float, default=0.0,
                    help="a GET answers the state of this many seconds ago")
    args = ap.parse_args()
    api = Api(args)
    api.mono0 = time.monotonic()
    api.wall0 = time.time()
    server = await asyncio.start_server(api.handle, "127.0.0.1", args.port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
