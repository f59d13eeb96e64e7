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
import subprocess
import tempfile
import time
from pathlib import Path

import orjson
import redis
from grimbots.lab.servers import (
    GRIMBOTS,
    free_port,
    gunicorn_command,
    port_open,
    wait_until,
)
from openloop import open_loop
from servers import add_bot, cpu_seconds, running_servers

HERE = Path(__file__).resolve().parent
SECRET = "bench-secret-0123456789"


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


def chat_update(path: str, base_id: int):
    """request_of(i) for the open loop: a distinct text message per request."""

    def request_of(i: int) -> tuple[str, bytes, dict[str, str]]:
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
        return path, body, {"X-Telegram-Bot-Api-Secret-Token": SECRET}

    return request_of


# --- orchestration -------------------------------------------------------------------


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
    with running_servers(work, postgres=False, redis_replicas=args.replicas) as servers:
        procs, redis_server = servers.procs, servers.redis
        web_port = free_port()
        env = servers.env(
            GRIMBOTS_LOG_LEVEL="WARNING",
            GRIMBOTS_REDIS_MIN_REPLICA_ACKS=str(args.min_replica_acks),
        )
        subprocess.run([GRIMBOTS, "db", "upgrade"], env=env, check=True, capture_output=True)
        bot = add_bot(env, "bench", "1:bench", SECRET)
        command = gunicorn_command(web_port, workers=args.workers)
        if args.worker_class:
            command += ["--worker-class", args.worker_class]
        if args.threads:
            command += ["--threads", str(args.threads)]
        web = procs.spawn("gunicorn", command, env)
        wait_until(lambda: port_open(web_port), 20, "gunicorn")
        base_url = f"http://127.0.0.1:{web_port}"
        path = f"/webhook/telegram/{bot['id']}"
        r = redis.Redis(port=redis_server.port)
        time.sleep(1)
        print(f"# gunicorn: {' '.join(command[1:])}")
        print(f"# cores: {os.cpu_count()}, load before: {os.getloadavg()[0]:.2f}")
        print(f"# redis replicas: {args.replicas}, min replica acks: {args.min_replica_acks}")

        # Phase 1: peak. CPU time per request is measured too: unlike req/s it barely
        # depends on what else the machine is doing at the time.
        web_pid, redis_pid = web.pid, redis_server.pid
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
            open_loop(
                "127.0.0.1", web_port, chat_update(path, 2_000_000_000), args.rate, args.duration
            )
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


if __name__ == "__main__":
    main()
