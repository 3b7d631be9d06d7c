"""N concurrent requests for one path, sent at the same instant (stdlib asyncio).

Opens N keep-alive connections first, then writes the N requests back to back, then reads
the N answers. Prints JSON: statuses, x-cache values, latency p50/max (ms from the send).
Usage: burst.py PORT PATH N
"""
import asyncio
import collections
import json
import sys
import time

port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])


async def read_answer(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers


async def main():
    conns = await asyncio.gather(*[asyncio.open_connection("127.0.0.1", port)
                                   for _ in range(n)])
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    t0 = time.monotonic()
    for _, w in conns:
        w.write(req)

    async def one(reader):
        status, headers = await read_answer(reader)
        return status, headers.get("x-cache", "-"), (time.monotonic() - t0) * 1000

    results = await asyncio.gather(*[one(r) for r, _ in conns])
    for _, w in conns:
        w.close()
    lat = sorted(r[2] for r in results)
    print(json.dumps({
        "n": n,
        "statuses": dict(collections.Counter(str(r[0]) for r in results)),
        "x_cache": dict(collections.Counter(r[1] for r in results)),
        "p50_ms": round(lat[len(lat) // 2], 1),
        "max_ms": round(lat[-1], 1),
    }))


asyncio.run(main())
