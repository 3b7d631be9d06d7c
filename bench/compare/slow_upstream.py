"""A slow stand-in for the Studio task API, for the coalescing figures (stdlib asyncio).

GET /api/task/{id} answers after DELAY seconds: `run-*` ids are running uploads, any other id
a completed task (bodies from tasks.py). Every call is counted per id; GET /stats returns the
counts as JSON ({"id": calls}). HTTP/1.1 keep-alive.
Usage: slow_upstream.py PORT [DELAY_S=0.2]
"""
import asyncio
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tasks  # noqa: E402

calls = collections.Counter()
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            if path == "/stats":
                body = json.dumps(calls).encode()
            elif path.startswith("/api/task/"):
                task_id = path.rsplit("/", 1)[-1]
                calls[task_id] += 1
                await asyncio.sleep(delay)
                phase = "running" if task_id.startswith("run") else "completed"
                body = tasks.body(task_id, phase)
            else:
                body = b'{"errors":["not found"]}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
