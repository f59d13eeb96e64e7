#!/usr/bin/env python3
"""Payments round-trip benchmark: buy -> charge -> pay -> deliver (a script, not a test).

Starts its own redis-server, a throwaway PostgreSQL cluster, both stand-ins
(`grimbots sandbox telegram|pix`), gunicorn (the real grimbots.gunicorn_conf) and RQ workers
(`grimbots worker` for tasks, gateway and webhook), all on free 127.0.0.1 ports. Then:
  1. charges: N leads each press "buy" (POST /webhook/telegram/<bot>, `--concurrency`
     clients at a time): tasks -> gateway -> PUT /cob at the PSP stand-in -> PIX code
     message at the Telegram stand-in;
  2. payments: the PSP stand-in pays the N charges, one /_sandbox/pay per charge in an
     open loop at `--rate` per second, each posting its signed callback to the app;
     latency = the delivery message's arrival at the Telegram stand-in minus the moment the
     PSP stand-in started POSTing that payment's callback (both stand-ins record it).
It prints P50/P95/P99 of that latency, each queue's throughput (jobs finished per second
of the phase, and per-job service time from RQ's own timestamps) and checks the outcome:
N payments paid, N deliveries, N delivery messages (no loss, no duplicate).

  .venv/bin/python app/bench/payments.py [--payments 1000] [--rate 50]
Traffic goes to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import psycopg
import redis
from grimbots.lab.servers import GRIMBOTS, free_port, gunicorn_command, port_open, wait_until
from grimbots.statuses import PaymentStatus
from rq import Queue
from rq.job import Job
from servers import add_bot, running_servers

SECRET = "bench-secret-0123456789"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
PIX_KEY = "bench@example.com"
PRICE_CENTS = 1990


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def queue_stats(connection: redis.Redis, name: str, func_name: str) -> dict[str, float]:
    """Jobs of one function finished on a queue: count, busy span, mean service time."""
    queue = Queue(name, connection=connection)
    ids = queue.finished_job_registry.get_job_ids()
    jobs = [j for j in Job.fetch_many(ids, connection=connection) if j is not None]
    jobs = [j for j in jobs if j.func_name.endswith(func_name)]
    if not jobs:
        return {"jobs": 0}
    started = min(j.started_at for j in jobs)
    ended = max(j.ended_at for j in jobs)
    span = (ended - started).total_seconds()
    service = [(j.ended_at - j.started_at).total_seconds() for j in jobs]
    return {
        "jobs": len(jobs),
        "span_s": span,
        "jobs_per_s": len(jobs) / span if span else float("nan"),
        "service_ms_mean": 1000 * statistics.mean(service),
        "service_ms_p95": 1000 * pct(service, 95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="payments per second offered")
    parser.add_argument("--concurrency", type=int, default=16, help="clients pressing buy")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--tasks-workers", type=int, default=2)
    parser.add_argument("--gateway-workers", type=int, default=2)
    parser.add_argument("--webhook-workers", type=int, default=2)
    args = parser.parse_args()

    load_before = os.getloadavg()
    with running_servers(Path(tempfile.mkdtemp(prefix="grimbots-bench-pay-"))) as servers:
        spawn, redis_server, pg = servers.procs.spawn, servers.redis, servers.pg
        web_port, tg_port, psp_port = (free_port() for _ in range(3))
        web_url = f"http://127.0.0.1:{web_port}"
        tg_url, psp_url = f"http://127.0.0.1:{tg_port}", f"http://127.0.0.1:{psp_port}"
        env = servers.env(
            GRIMBOTS_LOG_LEVEL="WARNING",
            GRIMBOTS_TELEGRAM_API_URL=tg_url,
            GRIMBOTS_PIX_BASE_URL=psp_url,
            GRIMBOTS_PIX_CLIENT_ID="bench",
            GRIMBOTS_PIX_CLIENT_SECRET="bench-secret",
            GRIMBOTS_PIX_KEY=PIX_KEY,
            GRIMBOTS_PIX_WEBHOOK_SECRET=WEBHOOK_SECRET,
        )
        grimbots = GRIMBOTS
        spawn("telegram", [grimbots, "sandbox", "telegram", "--port", str(tg_port)], env)
        spawn(
            "psp",
            [
                grimbots,
                "sandbox",
                "pix",
                "--port",
                str(psp_port),
                "--client-id",
                "bench",
                "--client-secret",
                "bench-secret",
                "--webhook-secret",
                WEBHOOK_SECRET,
                "--pix-key",
                PIX_KEY,
                "--notify-url",
                f"{web_url}/webhook/pix/apipix",
            ],
            env,
        )
        subprocess.run([grimbots, "db", "upgrade"], env=env, check=True, capture_output=True)

        def cli(*argv: str, stdin: bytes | None = None) -> dict:
            return orjson.loads(
                subprocess.run(
                    [grimbots, *argv], env=env, input=stdin, check=True, capture_output=True
                ).stdout
            )

        bot = add_bot(env, "bench", "1:bench", SECRET)
        offer = cli(
            "offers",
            "add",
            "--bot",
            str(bot["id"]),
            "--name",
            "Gold",
            "--price-cents",
            str(PRICE_CENTS),
            "--access-link",
            "https://t.me/+gold",
        )
        spawn("web", gunicorn_command(web_port, workers=args.web_workers), env)
        fleet = (
            ("tasks", args.tasks_workers),
            ("gateway", args.gateway_workers),
            ("webhook", args.webhook_workers),
        )
        for queue, count in fleet:
            for i in range(count):
                spawn(f"worker-{queue}-{i}", [grimbots, "worker", queue], env)
        ports = (web_port, tg_port, psp_port)
        wait_until(lambda: all(map(port_open, ports)), 20, "gunicorn and both stand-ins")
        r = redis.Redis(port=redis_server.port)
        wait_until(lambda: all(r.scard(f"rq:workers:{q}") == n for q, n in fleet), 60, "workers")
        http = httpx.Client(timeout=30)
        print(f"# cores: {os.cpu_count()}, load average before: {load_before[0]:.2f}")
        print(
            f"# web: gunicorn x{args.web_workers}; workers: "
            + ", ".join(f"{q} x{n}" for q, n in fleet)
            + "; PostgreSQL (throwaway), redis-server, both stand-ins as processes"
        )

        # --- phase 1: N buys ----------------------------------------------------------
        n = args.payments
        base_user = 10_000_000

        def press_buy(i: int) -> int:
            update = {
                "update_id": i + 1,
                "callback_query": {
                    "id": str(i + 1),
                    "from": {"id": base_user + i, "is_bot": False, "first_name": "B"},
                    "message": {"message_id": 1, "chat": {"id": base_user + i, "type": "private"}},
                    "data": f"buy:{offer['id']}",
                },
            }
            return http.post(
                f"{web_url}/webhook/telegram/{bot['id']}",
                content=orjson.dumps(update),
                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
            ).status_code

        started = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            statuses = list(pool.map(press_buy, range(n)))
        assert statuses == [200] * n, f"non-200 answers: {set(statuses)}"

        def charges() -> list[dict]:
            return http.get(f"{psp_url}/_sandbox/charges").json()["charges"]

        def code_messages() -> int:
            calls = http.get(f"{tg_url}/_sandbox/calls", params={"method": "sendMessage"})
            return sum(1 for c in calls.json()["calls"] if "PIX for" in (c["text"] or ""))

        wait_until(lambda: code_messages() >= n, 600, f"{n} PIX code messages", 0.5)
        phase1 = time.monotonic() - started
        txids = [c["txid"] for c in charges()]
        assert len(txids) == n, f"{len(txids)} charges at the PSP for {n} buys"
        print(f"\n## phase 1: {n} buys -> {n} charges -> {n} PIX codes in {phase1:.1f} s")

        # --- phase 2: N payments, open loop at --rate ---------------------------------
        load_mid = os.getloadavg()
        started = time.monotonic()
        pay_errors = []

        def pay(txid: str) -> None:
            answer = http.post(f"{psp_url}/_sandbox/pay", json={"txid": txid})
            if answer.status_code != 200:
                pay_errors.append(answer.text)

        threads = []
        for i, txid in enumerate(txids):
            delay = started + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=pay, args=(txid,))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(60)
        assert not pay_errors, pay_errors[:3]

        def deliveries() -> list[dict]:
            calls = http.get(f"{tg_url}/_sandbox/calls", params={"method": "sendMessage"})
            return [c for c in calls.json()["calls"] if "access=" in (c["text"] or "")]

        wait_until(lambda: len(deliveries()) >= n, 600, f"{n} delivery messages", 0.5)
        phase2 = time.monotonic() - started
        load_after = os.getloadavg()
        notifications = http.get(f"{psp_url}/_sandbox/notifications").json()["notifications"]
        by_txid = {note["txids"][0]: note for note in notifications}
        with psycopg.connect(pg.dsn("bench")) as conn:
            chat_of = dict(
                conn.execute(
                    "SELECT p.txid, l.chat_id FROM payments p JOIN leads l ON l.id = p.lead_id"
                ).fetchall()
            )
            paid = conn.execute(
                "SELECT count(*) FROM payments WHERE status = %s", (PaymentStatus.PAID,)
            ).fetchone()
            delivered = conn.execute("SELECT count(*) FROM deliveries").fetchone()
        delivery_at = {}
        per_chat: dict[int, int] = {}
        for call in deliveries():
            per_chat[call["chat_id"]] = per_chat.get(call["chat_id"], 0) + 1
            delivery_at.setdefault(call["chat_id"], call["time"])
        latencies = [1000 * (delivery_at[chat_of[t]] - by_txid[t]["sent_at"]) for t in txids]
        non_200 = sum(1 for note in notifications if note["status"] != 200)
        print(f"\n## phase 2: {n} payments offered at {args.rate:g}/s, done in {phase2:.1f} s")
        print(
            "notification -> delivery message, ms: "
            f"P50 {pct(latencies, 50):.1f}  P95 {pct(latencies, 95):.1f}  "
            f"P99 {pct(latencies, 99):.1f}  max {max(latencies):.1f}"
        )
        print(
            f"check: paid {paid[0]}, deliveries {delivered[0]}, delivery messages "
            f"{sum(per_chat.values())} (chats with more than one: "
            f"{sum(1 for v in per_chat.values() if v > 1)}), callbacks not 200: {non_200}"
        )

        print("\n## worker throughput (RQ's own start/end timestamps)")
        print("| queue | job | jobs | busy span s | jobs/s | service time mean / P95 ms |")
        print("|---|---|---|---|---|---|")
        for queue, func in (
            ("tasks", "process_update"),
            ("gateway", "create_charge"),
            ("webhook", "process_payment_event"),
        ):
            s = queue_stats(r, queue, func)
            if s["jobs"]:
                print(
                    f"| {queue} | {func} | {s['jobs']} | {s['span_s']:.1f} | "
                    f"{s['jobs_per_s']:.1f} | {s['service_ms_mean']:.1f} / "
                    f"{s['service_ms_p95']:.1f} |"
                )
        print(
            f"\n# load average (1 min): before {load_before[0]:.2f}, after phase 1 "
            f"{load_mid[0]:.2f}, after phase 2 {load_after[0]:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
