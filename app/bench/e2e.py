#!/usr/bin/env python3
"""The whole reply path: update -> webhook -> RQ -> worker -> Bot API reply (a script, not a
test). See docs/benchmarks.md, "Reply path".

Starts its own redis-server, a throwaway PostgreSQL 15 cluster (or SQLite with
--database sqlite), the Telegram stand-in as its own process (`grimbots sandbox
telegram`), gunicorn with the project's config (grimbots.gunicorn_conf, 4 gevent workers)
and N `grimbots worker tasks` processes (5, like the role's fleet), all on free 127.0.0.1
ports, with Prometheus multiprocess mode on and INFO logs (as the role runs them). Then,
for each offered rate R of the sweep, for `--duration` seconds:
  - an open-loop generator posts updates at t0 + i/R (no coordinated omission): even i a
    /start from a new user, odd i a text message from the user whose /start went out about
    a second earlier (a returning lead), spread over `--bots` bots;
  - update -> reply latency = the reply's arrival at the stand-in (its recorded call time)
    minus the update's scheduled send time, for every reply;
  - once the queue has drained: replies/s, P50/P95/P99, lost replies (an update without
    its reply) and doubled ones (two replies for one update), and CPU per update of each
    process group (web, workers, Redis, PostgreSQL, stand-in, generator) from the
    utime+stime deltas of its processes in /proc over the step, drain included.
CPU time is the figure to compare between runs: contention from other work on the box
inflates wall time and latency far more than it inflates CPU per update.

  .venv/bin/python app/bench/e2e.py [--rates 100,200,300,400] [--duration 30]
      [--tasks-workers 5] [--database postgres|sqlite] [--json results.json]
Traffic goes to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import psycopg
import redis
from grimbots.lab.audit import jobs_left
from grimbots.lab.servers import (
    GRIMBOTS,
    free_port,
    gunicorn_command,
    port_open,
    wait_until,
)
from grimbots.queues import TASKS
from openloop import open_loop
from servers import Servers, load_average, running_servers, seed_bots, tree_cpu

REPO = Path(__file__).resolve().parents[2]
GROUPS = ("web", "workers", "redis", "postgres", "stand-in", "generator")
POINT_TO_OFFERS = "Send /start to see our offers."  # grimbots.jobs.updates: the text reply
USERS_PER_STEP = 10_000_000  # user ids of one step never meet another step's


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


class Traffic:
    """The updates of one step and the reply each one must get: (token id, chat, kind)."""

    def __init__(self, bots: list[dict], rate: float, step: int):
        self.bots = bots
        self.rate = int(rate)
        self.base_user = (step + 1) * USERS_PER_STEP
        self.base_update = (step + 1) * USERS_PER_STEP * 10
        self.expected: dict[tuple[int, int, str], int] = {}  # reply key -> request index

    def update_of(self, i: int) -> tuple[dict, bytes]:
        """Update i of the step: (its bot, its JSON body)."""
        if i % 2 == 0:
            user, text, kind = self.base_user + i // 2, "/start", "welcome"
        elif i >= self.rate:  # the user whose /start went out about a second ago
            user, text, kind = self.base_user + (i - self.rate) // 2, "how much?", "reply"
        else:  # the first second: nobody to come back yet, a stranger writes
            user, text, kind = self.base_user + USERS_PER_STEP // 2 + i, "how much?", "reply"
        bot = self.bots[user % len(self.bots)]
        self.expected[(bot["token_id"], user, kind)] = i
        body = orjson.dumps(
            {
                "update_id": self.base_update + i,
                "message": {
                    "message_id": i + 1,
                    "from": {"id": user, "is_bot": False, "first_name": "Ana", "username": "ana"},
                    "chat": {"id": user, "type": "private", "first_name": "Ana"},
                    "date": int(time.time()),
                    "text": text,
                },
            }
        )
        return bot, body

    def request_of(self, i: int) -> tuple[str, bytes, dict[str, str]]:
        bot, body = self.update_of(i)
        return bot["path"], body, {"X-Telegram-Bot-Api-Secret-Token": bot["secret"]}


def run_step(args, step: int, rate: float, ctx: dict) -> dict:
    http, r, tg_url, groups = ctx["http"], ctx["redis"], ctx["tg_url"], ctx["groups"]
    http.delete(f"{tg_url}/_sandbox/calls").raise_for_status()
    traffic = Traffic(ctx["bots"], rate, step)
    load_before = load_average()
    counters_before = counters(ctx)
    cpu_before = tree_cpu(groups)
    own_before = os.times()
    if args.backlog:
        door = queue_backlog(args.backlog, traffic, ctx)
        rate = float("inf")  # every update was due when the workers were let go
    else:
        door = asyncio.run(
            open_loop("127.0.0.1", ctx["web_port"], traffic.request_of, rate, args.duration)
        )
    sent_until = door["t0_wall"] + door["sent"] / rate  # the last update's send time

    def drained() -> bool:
        return not any(jobs_left(r, (TASKS,)).values())

    wait_until(drained, args.drain_timeout, f"the tasks queue to drain at {rate:g}/s", 0.25)
    drained_at = time.time()
    own_after = os.times()
    cpu = {k: v - cpu_before[k] for k, v in tree_cpu(groups).items()}
    # The generator is this process; tree_cpu would count its children (everything else).
    cpu["generator"] = (own_after.user + own_after.system) - (own_before.user + own_before.system)
    load_after = load_average()
    counters_after = counters(ctx)

    # What one finished update keeps in Redis, by key (the rest is registry entries).
    bot, _ = traffic.update_of(0)
    bot_id, update_id = bot["path"].rsplit("/", 1)[1], traffic.base_update
    kept = {
        name: r.memory_usage(key) or 0
        for name, key in (
            ("job hash", f"rq:job:tg-{bot_id}-{update_id}"),
            ("result stream", f"rq:results:tg-{bot_id}-{update_id}"),
            ("dedupe key", f"grimbots:dedupe:{bot_id}:{update_id}"),
        )
    }

    calls = http.get(f"{tg_url}/_sandbox/calls", params={"method": "sendMessage"}).json()["calls"]
    t0 = door["t0_wall"]
    seen: dict[tuple[int, int, str], list[float]] = {}
    for call in calls:
        kind = "reply" if call["text"] == POINT_TO_OFFERS else "welcome"
        seen.setdefault((call["bot_id"], call["chat_id"], kind), []).append(call["time"])
    # Lost: an update answered 200 whose reply never came. One the generator gave up on
    # (no answer within its bounds) may still have been queued: its reply counts apart.
    accepted_keys = {k for k, i in traffic.expected.items() if i in door["answered_200"]}
    latencies, doubled, unexpected, late_accepted = [], 0, 0, 0
    for key, times in seen.items():
        index = traffic.expected.get(key)
        if index is None:
            unexpected += len(times)
            continue
        doubled += len(times) - 1
        if key not in accepted_keys:
            late_accepted += 1
            continue
        latencies.append(min(times) - (t0 + index / rate))
    latencies.sort()
    lost = sum(1 for key in accepted_keys if key not in seen)
    last_reply = max((c["time"] for c in calls), default=t0)
    accepted = door["statuses"].get(200, 0)
    cpu_ms = {k: 1000 * v / max(accepted, 1) for k, v in cpu.items()}
    return {
        "offered_rps": rate,
        "updates": door["sent"],
        "accepted": accepted,
        "door_errors": door["sent"] - accepted,  # not answered 200 (in time)
        "door_p95_ms": door["p95_ms"],
        "replies": len(calls),
        "replies_per_s": len(calls) / max(last_reply - t0, 1e-9),
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "p99_s": percentile(latencies, 99),
        "max_s": latencies[-1] if latencies else float("nan"),
        "lost": lost,
        "doubled": doubled,
        "unexpected": unexpected,
        "replied_but_not_answered_200": late_accepted,
        "not_200_at_stand_in": sum(1 for c in calls if c["status"] != 200),
        "drain_s": drained_at - sent_until,
        "cpu_ms_per_update": cpu_ms,
        "cpu_ms_per_update_all": sum(cpu_ms.values()),
        "redis_bytes_of_one_update": kept,
        "load_before": load_before,
        "load_after": load_after,
        **{
            f"{name}_per_update": (counters_after[name] - counters_before[name]) / max(accepted, 1)
            for name in counters_before
        },
    }


def queue_backlog(count: int, traffic: Traffic, ctx: dict) -> dict:
    """A backlog like the load test's 1,000 req/s minute leaves: `count` updates queued
    through the webhook's own code (TelegramIngest, in this process) while the workers are
    suspended (RQ's suspend; each may finish the batch it holds), then let go."""
    from rq.suspension import resume, suspend

    suspend(ctx["redis"])
    answered = set()
    for i in range(count):
        bot, body = traffic.update_of(i)
        bot_id = int(bot["path"].rsplit("/", 1)[1])
        answer = ctx["ingest"].handle(bot_id, bot["secret"], str(len(body)), lambda n, b=body: b)
        if answer.status == 200:
            answered.add(i)
    released = time.time()
    resume(ctx["redis"])
    return {
        "t0_wall": released,
        "sent": count,
        "statuses": {200: len(answered)},
        "answered_200": answered,
        "errors": count - len(answered),
        "p95_ms": None,
    }


def counters(ctx: dict) -> dict[str, float]:
    """Redis commands and PostgreSQL transactions so far (for per-update counts)."""
    values = {
        "redis_commands": float(ctx["redis"].info("stats")["total_commands_processed"]),
        # What the step left in Redis (finished jobs and their results, until result_ttl).
        "redis_bytes": float(ctx["redis"].info("memory")["used_memory"]),
    }
    if ctx["pg_dsn"]:
        with psycopg.connect(ctx["pg_dsn"], autocommit=True) as conn:
            commits, rollbacks, size = conn.execute(
                "SELECT xact_commit, xact_rollback, pg_database_size('bench')"
                " FROM pg_stat_database WHERE datname = 'bench'"
            ).fetchone()
        values["pg_transactions"] = float(commits + rollbacks)
        values["pg_bytes"] = float(size)  # tables and indexes, what the updates stored
    return values


def write_statements(dsn: str, updates: int, path: Path) -> None:
    """The app's statements during one rate, calls per update, busiest first."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT calls, total_exec_time, query FROM pg_stat_statements"
            " WHERE query NOT LIKE '%pg_stat%' ORDER BY calls DESC"
        ).fetchall()
    lines = [
        f"{calls / max(updates, 1):6.2f} per update  {ms:9.1f} ms  {q!r}" for calls, ms, q in rows
    ]
    path.write_text("\n".join(lines) + "\n")


def table(results: list[dict]) -> str:
    head = (
        "| offered/s | updates | replies/s | P50 | P95 | P99 | lost / doubled | drain s | "
        "CPU ms per update: web / workers / Redis / PG / stand-in / generator | all | load |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for res in results:
        c = res["cpu_ms_per_update"]
        rows.append(
            f"| {res['offered_rps']:g} | {res['updates']} | {res['replies_per_s']:.0f} | "
            f"{1000 * res['p50_s']:.0f} ms | {1000 * res['p95_s']:.0f} ms | "
            f"{1000 * res['p99_s']:.0f} ms | {res['lost']} / {res['doubled']} | "
            f"{res['drain_s']:.1f} | "
            + " / ".join(f"{c[g]:.2f}" for g in GROUPS)
            + f" | **{res['cpu_ms_per_update_all']:.2f}** | {res['load_after'].split(' / ')[0]} |"
        )
    return head + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100,200,300,400", help="offered updates/s, a list")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--tasks-workers", type=int, default=5)
    parser.add_argument("--web-workers", type=int, default=4)
    parser.add_argument(
        "--worker-class", help="`grimbots worker --worker-class` (default: the worker's own)"
    )
    parser.add_argument("--bots", type=int, default=10)
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument(
        "--backlog",
        type=int,
        help="instead of the sweep: queue this many updates with the workers suspended, then"
        " time their drain (60000: what the load test's 1,000 req/s minute leaves)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' logs here")
    parser.add_argument(
        "--statements",
        type=Path,
        help="count the SQL statements of each rate (pg_stat_statements) into this folder",
    )
    args = parser.parse_args()
    rates = [float(x) for x in args.rates.split(",")]
    if args.statements:
        args.statements.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="grimbots-bench-e2e-"))
    pg_settings = "-c shared_preload_libraries=pg_stat_statements" if args.statements else ""
    postgres = args.database == "postgres"
    with running_servers(work, postgres, pg_settings, keep_logs=args.keep_logs) as servers:
        sweep(args, rates, servers)


def sweep(args, rates: list[float], servers: Servers) -> None:
    """Start the stand-in, gunicorn and the workers on `servers`, then run each rate."""
    procs, redis_server, pg = servers.procs, servers.redis, servers.pg
    results: list[dict] = []
    web_port, tg_port = free_port(), free_port()
    tg_url = f"http://127.0.0.1:{tg_port}"
    env = servers.env(GRIMBOTS_LOG_LEVEL="INFO", GRIMBOTS_TELEGRAM_API_URL=tg_url)
    subprocess.run([GRIMBOTS, "db", "upgrade"], env=env, check=True, capture_output=True)
    bots = [
        {"path": f"/webhook/telegram/{b['id']}", "secret": b["secret"], "token_id": b["token_id"]}
        for b in seed_bots(env, args.bots, "e2e")
    ]
    stand_in = procs.spawn(
        "telegram", [GRIMBOTS, "sandbox", "telegram", "--port", str(tg_port)], env
    )
    web = procs.spawn("web", gunicorn_command(web_port, workers=args.web_workers), env)
    workers = [
        procs.spawn(
            f"worker-{i}",
            [GRIMBOTS, "worker", "tasks"]
            + (["--worker-class", args.worker_class] if args.worker_class else []),
            env,
        )
        for i in range(args.tasks_workers)
    ]
    wait_until(lambda: port_open(tg_port) and port_open(web_port), 20, "the stand-in and gunicorn")
    r = redis.Redis(port=redis_server.port)
    wait_until(lambda: r.scard("rq:workers:tasks") == args.tasks_workers, 60, "workers registered")
    groups = {
        "web": [web.pid],
        "workers": [w.pid for w in workers],
        "redis": [redis_server.pid],
        "postgres": [pg.pid] if pg else [],
        "stand-in": [stand_in.pid],
        "generator": [],
    }
    ctx = {
        "http": httpx.Client(timeout=120),
        "redis": r,
        "tg_url": tg_url,
        "web_port": web_port,
        "bots": bots,
        "groups": groups,
        "pg_dsn": pg.dsn("bench") if pg else None,
    }
    if args.statements and pg:
        with psycopg.connect(pg.dsn("bench"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
    if args.backlog:
        from grimbots.bot_secrets import BotSecretCache
        from grimbots.settings import load_settings
        from grimbots.telegram_ingest import TelegramIngest

        secrets = {int(b["path"].rsplit("/", 1)[1]): b["secret"] for b in bots}
        ctx["ingest"] = TelegramIngest(load_settings(env), BotSecretCache(secrets.get))
        rates = [1000.0]  # only shapes the traffic's mix (who writes again when)
    commit = git_commit()
    print(
        f"# commit {commit}; {os.cpu_count()} cores; {args.database}; gunicorn x"
        f"{args.web_workers} (gevent), tasks workers x{args.tasks_workers}"
        f" ({args.worker_class or 'default class'}), {args.bots} bots;"
        f" {args.duration:g} s per rate"
    )
    print(f"# uptime before: {uptime()}")
    # Warm-up (not reported): connections, caches, the first INSERTs of each table.
    warm = argparse.Namespace(**{**vars(args), "duration": 3.0, "backlog": None})
    run_step(warm, 0, 20.0, ctx)
    for step, rate in enumerate(rates, start=1):
        if args.statements and pg:
            with psycopg.connect(pg.dsn("bench"), autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
        res = run_step(args, step, rate, ctx)
        if args.statements and pg:
            write_statements(
                pg.dsn("bench"), res["accepted"], args.statements / f"{rate:g}-sql.txt"
            )
        results.append(res)
        c = res["cpu_ms_per_update"]
        print(
            f"{rate:g}/s: {res['replies']} replies for {res['accepted']} updates "
            f"({res['door_errors']} not accepted, door P95 {res['door_p95_ms']} ms), "
            f"{res['replies_per_s']:.0f} replies/s, P50/P95/P99 "
            f"{1000 * res['p50_s']:.0f}/{1000 * res['p95_s']:.0f}/"
            f"{1000 * res['p99_s']:.0f} ms, max {1000 * res['max_s']:.0f} ms, "
            f"lost {res['lost']}, doubled {res['doubled']}, unexpected {res['unexpected']}, "
            f"replied though the door did not answer 200 in time "
            f"{res['replied_but_not_answered_200']}, "
            f"not 200 at stand-in {res['not_200_at_stand_in']}, drain {res['drain_s']:.1f} s; "
            f"per update: {res['redis_commands_per_update']:.1f} Redis commands, "
            f"{res['redis_bytes_per_update']:.0f} bytes kept in Redis "
            f"({', '.join(f'{k} {v}' for k, v in res['redis_bytes_of_one_update'].items())}), "
            f"{res.get('pg_transactions_per_update', float('nan')):.1f} PG transactions, "
            f"{res.get('pg_bytes_per_update', float('nan')):.0f} bytes stored in PG; "
            f"CPU ms/update "
            + ", ".join(f"{g} {c[g]:.2f}" for g in GROUPS)
            + f" = {res['cpu_ms_per_update_all']:.2f}; load {res['load_before']} -> "
            f"{res['load_after']}",
            flush=True,
        )
    print(f"# uptime after: {uptime()}")
    print()
    print(table(results))
    if args.json:
        args.json.write_text(
            orjson.dumps(
                {"commit": commit, "database": args.database, "results": results},
                option=orjson.OPT_INDENT_2,
            ).decode()
        )


if __name__ == "__main__":
    main()
