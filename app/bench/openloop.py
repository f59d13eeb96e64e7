"""An open-loop HTTP generator (wrk2 is not packaged for Debian).

Request i is sent at t0 + i/rate whether or not earlier answers came back, and each
latency is measured from that scheduled time, so a stall is charged to every request it
delays (no coordinated omission). At most `max_connections` keep-alive connections, like
a proxy in front of gunicorn (HAProxy's per-server maxconn): a request that finds them all
busy waits for one, and that wait counts in its latency.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable


async def open_loop(
    host: str,
    port: int,
    request_of: Callable[[int], tuple[str, bytes, dict[str, str]]],
    rate: float,
    duration: float,
    max_connections: int = 64,
) -> dict:
    """Send int(rate * duration) requests; request_of(i) -> (path, body, extra headers).

    The result has `t0_wall`: the wall-clock (time.time()) moment of request 0's scheduled
    send, so request i was due at t0_wall + i / rate.
    """
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    released = asyncio.Condition()
    opened = 0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    answered_200: set[int] = set()
    errors = 0

    async def connection():
        nonlocal opened
        async with released:
            while not idle and opened >= max_connections:
                await released.wait()
            if idle:
                return idle.pop()
            opened += 1
        return await asyncio.open_connection(host, port)

    async def give_back(conn) -> None:
        nonlocal opened
        async with released:
            if conn is None:
                opened -= 1
            else:
                idle.append(conn)
            released.notify()

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        path, body, headers = request_of(i)
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        conn = None
        try:
            conn = reader, writer = await connection()
            writer.write(request)
            status_line = await reader.readline()
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                close = close or line.lower().replace(b" ", b"") == b"connection:close\r\n"
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - scheduled)
            status = int(status_line.split()[1])
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                answered_200.add(i)
            if close:  # the sync worker closes every connection
                writer.close()
                conn = None
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            errors += 1
            conn = None
        await give_back(conn)

    total = int(rate * duration)
    tasks = []
    start = time.perf_counter() + 0.1
    t0_wall = time.time() + (start - time.perf_counter())
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    # Bounded: whatever has not answered 30 s after the last send counts as an error.
    _, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    errors += len(pending)
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "offered_rps": rate,
        "sent": total,
        "t0_wall": t0_wall,
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "statuses": statuses,
        "answered_200": answered_200,  # request indices
        "errors": errors,
        "connections": opened,  # at the end; never more than max_connections
        "p50_ms": round(pct(50), 2) if latencies else None,
        "p95_ms": round(pct(95), 2) if latencies else None,
        "p99_ms": round(pct(99), 2) if latencies else None,
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
    }
