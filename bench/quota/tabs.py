"""Browser tabs following tasks (or assets, --kind asset) through a proxy, for bench/quota.sh
(Python 3.11 stdlib, asyncio).

Every tab follows every task of the simulated API (bench/quota/upstream.py), on its own
keep-alive connection per task, starting at a random moment within the first period:

  --mode poll   GET /task/{id} every --period s, until --linger s after the task completed
                (real tabs keep polling until their code notices, or forever if left open)
  --mode watch  one GET /task/{id}/events (Server-Sent Events) per task, read until the
                stream closes after the finished phase (reconnects with Last-Event-ID, like
                EventSource, if it closes early: counted)
  --kind asset  /asset/{id} instead (finished: `ready`, `failed`); --query is appended to each
                poll (Studio's dashboard asks `?details=1`), and --linger 0 stops polling at
                `ready`, as the dashboard does

The upstream's /ctl/schedule is the truth: each body carries its version `v`, so for every
status change of every task we know when each tab first saw it (staleness), and for every
answer whether it was already out of date when asked for. Prints one JSON object.
"""
import argparse
import asyncio
import json
import random
import time
import urllib.parse

mono = time.monotonic
FINISHED = ("completed", "failed", "cancelled", "ready")


class Conn:
    """A minimal HTTP/1.1 keep-alive client: GET with Content-Length or chunked bodies."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.r = self.w = None

    async def open(self):
        self.r, self.w = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.w:
            self.w.close()
        self.r = self.w = None

    async def send(self, path, headers=()):
        if self.w is None:
            await self.open()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
        self.w.write(f"GET {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{extra}\r\n".encode())
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        hdrs = {}
        for l in lines[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        return status, hdrs

    async def get(self, path):
        for attempt in (0, 1):
            try:
                status, hdrs = await self.send(path)
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed an idle keep-alive connection: reopen once, as browsers do.
                self.close()
                if attempt:
                    raise
        if "content-length" in hdrs:
            body = await self.r.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            body = b"".join([c async for c in self.chunks()])
        else:
            body = await self.r.read()
            self.close()
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, body

    async def chunks(self):
        while True:
            size = int((await self.r.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.r.readuntil(b"\r\n")
                return
            data = await self.r.readexactly(size + 2)
            yield data[:-2]


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs))) - 1))]


class Stats:
    def __init__(self):
        self.requests = 0           # polls, or streams opened (reconnects included)
        self.events = 0             # SSE task events received
        self.errors = []            # (tab, task, what)
        self.staleness = []         # seconds from a true status change to a tab first seeing it
        self.final_staleness = []   # the same, for the finished phase only
        self.stale_answers = 0      # answers already out of date when the request was sent
        self.max_stale_age = 0.0    # how out of date the worst of them was (s)
        self.regressions = 0        # a version older than one the tab had already seen
        self.unfinished_after_done = 0  # an unfinished phase shown after the task completed
        self.bad_bodies = 0         # phase does not match the version's phase
        self.reconnects = 0
        self.xcache = {}
        self.tabs_late = set()      # saw a finished phase later than period + 0.5 s
        self.tabs_unfinished = set()
        self.tabs_regressed = set()
        self.tabs_missed = set()    # never saw the finished phase


class Follow:
    """What one tab knows of one task."""

    def __init__(self, tab, changes, t0, st):
        self.tab, self.changes, self.t0, self.st = tab, changes, t0, st
        self.first_seen = [None] * len(changes)
        self.maxv = -1
        self.done_at = t0 + changes[-1][0]

    def truth(self, at):
        v = 0
        for k, (t, _, _) in enumerate(self.changes):
            if self.t0 + t <= at:
                v = k
        return v

    def saw(self, body, asked, got, unfinished_slack):
        st = self.st
        d = json.loads(body)
        v, phase = d["v"], d["status"]["phase"]
        if self.changes[v][1] != phase:
            st.bad_bodies += 1
        if asked is not None and v < self.truth(asked):
            st.stale_answers += 1
            st.max_stale_age = max(st.max_stale_age, asked - (self.t0 + self.changes[v + 1][0]))
        if v < self.maxv:
            st.regressions += 1
            st.tabs_regressed.add(self.tab)
        ref = asked if asked is not None else got - unfinished_slack
        if phase not in FINISHED and ref > self.done_at:
            st.unfinished_after_done += 1
            st.tabs_unfinished.add(self.tab)
        for k in range(max(1, self.maxv + 1), v + 1):
            self.first_seen[k] = got
        self.maxv = max(self.maxv, v)
        return phase in FINISHED

    def finish(self, period):
        st = self.st
        for k in range(1, len(self.changes)):
            if self.first_seen[k] is not None:
                st.staleness.append(self.first_seen[k] - (self.t0 + self.changes[k][0]))
        last = self.first_seen[-1]
        if last is None:
            st.tabs_missed.add(self.tab)
            return
        s = last - self.done_at
        st.final_staleness.append(s)
        if s > period + 0.5:
            st.tabs_late.add(self.tab)


async def poll(host, port, tab, tid, changes, t0, a, st, rng):
    f = Follow(tab, changes, t0, st)
    # --linger 0: poll until the finished phase is seen, however late (a safety stop at 60 s).
    end = f.done_at + (a.linger if a.linger > 0 else 60)
    nxt = t0 + rng.uniform(0, a.period)
    conn = Conn(host, port)
    while nxt < end:
        await asyncio.sleep(max(0.0, nxt - mono()))
        asked = mono()
        try:
            status, hdrs, body = await conn.get(f"/{a.kind}/{tid}{a.query}")
        except Exception as e:  # noqa: BLE001 - a failed poll is counted, the tab goes on
            st.errors.append((tab, tid, repr(e)))
            conn.close()
            nxt = asked + a.period
            continue
        got = mono()
        st.requests += 1
        x = hdrs.get("x-cache", "-")
        st.xcache[x] = st.xcache.get(x, 0) + 1
        if status != 200:
            st.errors.append((tab, tid, f"status {status}"))
        elif f.saw(body, asked, got, 0) and a.linger <= 0:
            break  # the dashboard's loop: stop at the finished phase
        nxt += a.period
        if nxt < got:
            nxt = got
    conn.close()
    f.finish(a.period)


async def watch(host, port, tab, tid, changes, t0, a, st, rng):
    f = Follow(tab, changes, t0, st)
    await asyncio.sleep(max(0.0, t0 + rng.uniform(0, a.period) - mono()))
    deadline = f.done_at + a.linger + 10
    last_id = None
    finished = False
    while not finished and mono() < deadline:
        conn = Conn(host, port)
        st.requests += 1
        try:
            hdrs_extra = [("accept", "text/event-stream")]
            if last_id:
                hdrs_extra.append(("last-event-id", last_id))
            status, hdrs = await asyncio.wait_for(conn.send(f"/{a.kind}/{tid}/events", hdrs_extra),
                                                  deadline - mono())
            if status == 204:
                finished = True  # a finished task whose last event we have: stop
                break
            if status != 200:
                st.errors.append((tab, tid, f"status {status}"))
                break
            chunked = hdrs.get("transfer-encoding", "").lower() == "chunked"
            buf = b""

            async def pieces():
                if chunked:
                    async for c in conn.chunks():
                        yield c
                else:
                    while data := await conn.r.read(65536):
                        yield data

            it = pieces().__aiter__()
            while not finished:
                try:
                    data = await asyncio.wait_for(it.__anext__(), max(0.1, deadline - mono()))
                except StopAsyncIteration:
                    break
                buf += data
                while b"\n\n" in buf:
                    raw, buf = buf.split(b"\n\n", 1)
                    kind, eid, datas = "message", None, []
                    for line in raw.split(b"\n"):
                        if line.startswith(b"event:"):
                            kind = line[6:].strip().decode()
                        elif line.startswith(b"id:"):
                            eid = line[3:].strip().decode()
                        elif line.startswith(b"data:"):
                            datas.append(line[5:].lstrip(b" "))
                    if not datas:
                        continue  # a keep-alive comment
                    if kind == a.kind:
                        st.events += 1
                        last_id = eid or last_id
                        finished = f.saw(b"\n".join(datas), None, mono(), 0.5)
                    else:
                        st.errors.append((tab, tid, f"event {kind}: {b''.join(datas)[:80]!r}"))
                        finished = True
        except Exception as e:  # noqa: BLE001
            st.errors.append((tab, tid, repr(e)))
        finally:
            conn.close()
        if not finished:
            st.reconnects += 1
            await asyncio.sleep(1.0)
    f.finish(a.period)


async def fetch_json(host, port, path):
    c = Conn(host, port)
    try:
        status, _, body = await c.get(path)
        return json.loads(body)
    finally:
        c.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="proxy base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--upstream", required=True, help="simulated API base URL (for /ctl)")
    ap.add_argument("--mode", choices=["poll", "watch"], default="poll")
    ap.add_argument("--tabs", type=int, default=50)
    ap.add_argument("--period", type=float, default=2.0)
    ap.add_argument("--linger", type=float, default=15.0)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--kind", choices=["task", "asset"], default="task")
    ap.add_argument("--query", default="", help="appended to each poll, e.g. ?details=1")
    a = ap.parse_args()
    b, u = urllib.parse.urlsplit(a.base), urllib.parse.urlsplit(a.upstream)
    sched = (await fetch_json(u.hostname, u.port, "/ctl/schedule"))["tasks"]
    t0 = mono() + 0.5
    await fetch_json(u.hostname, u.port, f"/ctl/start?t0={t0!r}")
    st = Stats()
    rng = random.Random(a.seed)
    jobs = []
    for tab in range(a.tabs):
        for tid, changes in sched.items():
            fn = poll if a.mode == "poll" else watch
            jobs.append(fn(b.hostname, b.port, tab, tid, changes, t0, a, st, random.Random(rng.random())))
    started = mono()
    await asyncio.gather(*jobs)
    elapsed = mono() - started
    up = await fetch_json(u.hostname, u.port, "/ctl/stats")
    r3 = lambda x: None if x is None else round(x, 3)
    print(json.dumps({
        "kind": a.kind, "mode": a.mode, "tabs": a.tabs, "tasks": len(sched), "period_s": a.period,
        "linger_s": a.linger, "seconds": round(elapsed, 1),
        "last_completion_s": round(max(c[-1][0] for c in sched.values()), 1),
        "status_changes_per_task": round(sum(len(c) - 1 for c in sched.values()) / len(sched), 1),
        "status_changes": sum(len(c) - 1 for c in sched.values()),
        "upstream_calls": up["calls"], "upstream_calls_unfinished": up["calls_unfinished"],
        "webhooks_sent": up.get("webhooks_sent", 0), "webhook_failures": up.get("webhook_failures", 0),
        "upstream_calls_finished": up["calls_finished"],
        "tab_requests": st.requests, "sse_events": st.events, "reconnects": st.reconnects,
        "errors": len(st.errors), "error_samples": st.errors[:5], "x_cache": st.xcache,
        "staleness_p50_s": r3(pct(st.staleness, 0.50)), "staleness_p99_s": r3(pct(st.staleness, 0.99)),
        "staleness_max_s": r3(max(st.staleness, default=None)),
        "final_staleness_p50_s": r3(pct(st.final_staleness, 0.50)),
        "final_staleness_max_s": r3(max(st.final_staleness, default=None)),
        "stale_answers": st.stale_answers, "max_stale_age_s": r3(st.max_stale_age),
        "regressions": st.regressions, "unfinished_after_done": st.unfinished_after_done,
        "bad_bodies": st.bad_bodies,
        "tabs_late_final": len(st.tabs_late), "tabs_unfinished_after_done": len(st.tabs_unfinished),
        "tabs_regressed": len(st.tabs_regressed), "tabs_missed_final": len(st.tabs_missed),
        "tabs_wrong": len(st.tabs_late | st.tabs_unfinished | st.tabs_regressed | st.tabs_missed),
    }))


if __name__ == "__main__":
    asyncio.run(main())
