#!/usr/bin/env python3
"""Ingest benchmark for the web tier (a script, not a test). See docs/benchmarks.md.

Starts its own redis-server and gunicorn (the real grimbots.gunicorn_conf) on free
127.0.0.1 ports, with one bot in a throwaway SQLite database and Prometheus multiprocess
mode on (as in production), and no RQ worker (so every accepted update stays queued and
can be counted). Then:
  1. peak: wrk (closed loop, keep-alive connections) with unique update_ids;
  2. latency at a fixed offered rate: an open-loop generator (below) that sends request i
     at t0 + i/rate whether or not earlier answers came back, and measures each latency
     from that scheduled time, so a stall is charged to every request it delays
     (no coordinated omission; wrk2 is not packaged for Debian).
After each phase it compares the 200s with the jobs actually enqueued in Redis.

  .venv/bin/python app/bench/ingest.py [--workers 4] [--duration 15] [--rate 1000]
With --replicas 1 a replica follows the redis-server, and --min-replica-acks 1 makes the
webhook wait for it (WAIT, GRIMBOTS_REDIS_MIN_REPLICA_ACKS): compare the two for its cost.
Traffic goes to 127.0.0.1 only, and every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SECRET = "bench-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port} after {timeout}s")


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """utime + stime of a process and (optionally) its live children, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    if with_children:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == pid:
                    pids.append(int(entry.name))
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def accepted_counter(base_url: str) -> tuple[float, float]:
    """(accepted updates, HTTP 200 answers on the webhook) from the app's /metrics."""
    import httpx

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    accepted = sum(
        float(m)
        for m in re.findall(
            r'^grimbots_telegram_updates_total\{outcome="accepted",reason=""\} (\S+)$', text, re.M
        )
    )
    ok = sum(
        float(m)
        for m in re.findall(
            r'^grimbots_http_requests_total\{route="/webhook/telegram/<int:bot_id>",status="200"\} '
            r"(\S+)$",
            text,
            re.M,
        )
    )
    return accepted, ok


# --- open-loop generator -------------------------------------------------------------


async def open_loop(
    host: str,
    port: int,
    path: str,
    rate: float,
    duration: float,
    base_id: int,
    max_connections: int = 64,
) -> dict:
    # Like a proxy in front of gunicorn (HAProxy's per-server maxconn): at most
    # max_connections keep-alive connections; a request that finds them all busy waits for
    # one, and that wait counts in its latency (measured from its scheduled send time).
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    released = asyncio.Condition()
    opened = 0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
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
        async with released:
            if conn is None:
                nonlocal opened
                opened -= 1
            else:
                idle.append(conn)
            released.notify()

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        body = orjson.dumps(
            {
                "update_id": base_id + i,
                "message": {
                    "message_id": i,
                    "from": {"id": 1000 + i % 500, "is_bot": False, "first_name": "L"},
                    "chat": {"id": 1000 + i % 500, "type": "private"},
                    "date": 1700000000,
                    "text": "hello",
                },
            }
        )
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-Telegram-Bot-Api-Secret-Token: {SECRET}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
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
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "statuses": statuses,
        "errors": errors,
        "connections": opened,  # at the end; never more than max_connections
        "p50_ms": round(pct(50), 2),
        "p95_ms": round(pct(95), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
    }


# --- orchestration -------------------------------------------------------------------


def wait_replicas(port: int, count: int, timeout: float = 20) -> None:
    primary = redis.Redis(port=port)
    deadline = time.monotonic() + timeout
    while primary.info("replication")["connected_slaves"] < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} replica(s) not connected after {timeout}s")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--worker-class", default=None, help="override gunicorn_conf's choice")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--duration", type=int, default=15, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop offered req/s")
    parser.add_argument("--replicas", type=int, default=0, help="replicas of the redis-server")
    parser.add_argument(
        "--min-replica-acks", type=int, default=0, help="GRIMBOTS_REDIS_MIN_REPLICA_ACKS"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="grimbots-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        redis_port, web_port = free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(work),
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        wait_port(redis_port)
        for index in range(args.replicas):
            replica_dir, replica_port = work / f"replica-{index}", free_port()
            replica_dir.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(replica_port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(replica_dir),
                        "--replicaof",
                        "127.0.0.1",
                        str(redis_port),
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            wait_port(replica_port)
        if args.replicas:
            wait_replicas(redis_port, args.replicas)
        (work / "prometheus").mkdir()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GRIMBOTS_")},
            "GRIMBOTS_DATABASE_URL": f"sqlite:///{work}/bench.db",
            "GRIMBOTS_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "GRIMBOTS_ADMIN_TOKEN": "bench-admin-token-0123456789",
            "GRIMBOTS_LOG_LEVEL": "WARNING",
            "PROMETHEUS_MULTIPROC_DIR": str(work / "prometheus"),
            "GRIMBOTS_REDIS_MIN_REPLICA_ACKS": str(args.min_replica_acks),
        }
        grimbots = str(BIN / "grimbots")
        subprocess.run([grimbots, "db", "upgrade"], env=env, check=True, capture_output=True)
        bot = orjson.loads(
            subprocess.run(
                [
                    grimbots,
                    "bots",
                    "add",
                    "--name",
                    "bench",
                    "--token",
                    "1:bench",
                    "--secret",
                    SECRET,
                ],
                env=env,
                check=True,
                capture_output=True,
            ).stdout
        )
        command = [
            str(BIN / "gunicorn"),
            "-c",
            "python:grimbots.gunicorn_conf",
            "grimbots.wsgi:app",
            "--bind",
            f"127.0.0.1:{web_port}",
            "--workers",
            str(args.workers),
        ]
        if args.worker_class:
            command += ["--worker-class", args.worker_class]
        if args.threads:
            command += ["--threads", str(args.threads)]
        procs.append(subprocess.Popen(command, env=env, stderr=open(work / "gunicorn.log", "wb")))  # noqa: SIM115
        wait_port(web_port)
        base_url = f"http://127.0.0.1:{web_port}"
        path = f"/webhook/telegram/{bot['id']}"
        r = redis.Redis(port=redis_port)
        time.sleep(1)
        print(f"# gunicorn: {' '.join(command[1:])}")
        print(f"# cores: {os.cpu_count()}, load before: {os.getloadavg()[0]:.2f}")
        print(f"# redis replicas: {args.replicas}, min replica acks: {args.min_replica_acks}")

        # Phase 1: peak. CPU time per request is measured too: unlike req/s it barely
        # depends on what else the machine is doing at the time.
        web_pid, redis_pid = procs[-1].pid, procs[0].pid
        web_cpu, redis_cpu = cpu_seconds(web_pid), cpu_seconds(redis_pid, False)
        wrk_cpu = os.times().children_user + os.times().children_system
        wrk = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "-s",
                str(HERE / "webhook.lua"),
                base_url + path,
            ],
            env={**os.environ, "WEBHOOK_SECRET": SECRET, "UPDATE_ID_BASE": "1000000000"},
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
        )
        stats = dict(
            kv.split("=") for kv in re.search(r"^WRK (.*)$", wrk.stdout, re.M).group(1).split()
        )
        stats = {k: int(v) for k, v in stats.items()}
        web_cpu = cpu_seconds(web_pid) - web_cpu
        redis_cpu = cpu_seconds(redis_pid, False) - redis_cpu
        wrk_cpu = os.times().children_user + os.times().children_system - wrk_cpu
        time.sleep(0.5)
        accepted, ok = accepted_counter(base_url)
        queued = r.llen("rq:queue:tasks")
        rps = stats["requests"] / (stats["duration_us"] / 1e6)
        per_request = {
            name: cpu / max(accepted, 1) * 1e6
            for name, cpu in (("gunicorn", web_cpu), ("redis", redis_cpu), ("wrk", wrk_cpu))
        }
        print(
            f"peak (wrk -t1 -c{args.connections} {args.duration}s): {rps:.0f} req/s, "
            f"p50 {stats['p50_us'] / 1000:.2f} ms, p95 {stats['p95_us'] / 1000:.2f} ms, "
            f"p99 {stats['p99_us'] / 1000:.2f} ms, non-2xx {stats['non2xx']}, "
            f"socket errors {stats['connect_errors'] + stats['read_errors'] + stats['timeouts']}"
        )
        print(
            f"  server: 200 answers {ok:.0f}, accepted {accepted:.0f}; enqueued in Redis {queued}"
            f" -> {'OK' if queued == accepted == ok else 'MISMATCH'}"
            f" (wrk counts {stats['requests'] - stats['non2xx']} 2xx; it stops counting the"
            f" few still in flight when time is up)"
        )
        total_us = sum(per_request.values())
        print(
            "  CPU per request: "
            + ", ".join(f"{k} {v:.0f} us" for k, v in per_request.items())
            + f"; total {total_us:.0f} us -> at most {os.cpu_count() * 1e6 / total_us:.0f} req/s"
            f" if these processes had all {os.cpu_count()} cores to themselves"
        )

        # Phase 2: fixed offered rate, open loop.
        r.flushall()
        before_accepted, _ = accepted_counter(base_url)
        result = asyncio.run(
            open_loop("127.0.0.1", web_port, path, args.rate, args.duration, base_id=2_000_000_000)
        )
        time.sleep(0.5)
        accepted, ok = accepted_counter(base_url)
        queued = r.llen("rq:queue:tasks")
        non2xx = sum(n for s, n in result["statuses"].items() if not 200 <= s < 300)
        print(
            f"open loop at {args.rate:.0f} req/s offered for {args.duration}s: achieved "
            f"{result['achieved_rps']} req/s, p50 {result['p50_ms']} ms, p95 {result['p95_ms']}"
            f" ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms, non-2xx {non2xx}, "
            f"errors {result['errors']}, connections {result['connections']}"
        )
        got_200 = result["statuses"].get(200, 0)
        print(
            f"  client 200s {got_200}, server accepted {accepted - before_accepted:.0f}; "
            f"enqueued in Redis {queued} -> {'OK' if queued == got_200 else 'MISMATCH'}"
        )
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
