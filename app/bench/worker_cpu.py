#!/usr/bin/env python3
"""CPU time of one update in the worker, and where it goes (a script, not a test).

Starts redis-server, a throwaway PostgreSQL and the Telegram stand-in (its own process),
queues `--updates` updates through the webhook's own code (TelegramIngest: dedupe + the
Lua enqueue; the same /start and text mix as e2e.py), then works them in THIS process with
the worker class `grimbots worker` uses, in burst mode, INFO logs to a file and Prometheus
multiprocess mode on, as in production. It reports the worker's CPU time per update
(time.process_time(): contention barely moves it, unlike wall time), Redis commands and
PostgreSQL transactions per update; with --cprofile, a profile with a CPU-time clock whose
self time is summed by library (a builtin's time goes to the library that called it).

  .venv/bin/python app/bench/worker_cpu.py [--updates 2000] [--worker-class batch|simple]
      [--batch-size 32] [--cprofile]
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="grimbots-bench-cpu-"))
(WORK / "prometheus").mkdir()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(WORK / "prometheus")  # before prometheus_client

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import psycopg  # noqa: E402
from e2e import Traffic  # noqa: E402
from grimbots.lab.servers import GRIMBOTS, free_port, port_open, wait_until  # noqa: E402
from servers import running_servers, seed_bots  # noqa: E402

# Library of a profiled function, by its file; the first match wins.
LIBRARIES = (
    ("/rq/", "RQ (its Python)"),
    ("/redis/", "redis-py (RQ's Redis commands)"),
    ("/sqlalchemy/", "SQLAlchemy"),
    ("/psycopg", "psycopg (PostgreSQL driver)"),
    ("/httpx/", "httpx + httpcore + h11 (Telegram client)"),
    ("/httpcore/", "httpx + httpcore + h11 (Telegram client)"),
    ("/h11/", "httpx + httpcore + h11 (Telegram client)"),
    ("/logging/", "logging"),
    ("/grimbots/logs.py", "logging"),
    ("/prometheus_client/", "metrics (prometheus_client)"),
    ("/grimbots/", "grimbots (app code)"),
    ("/json/", "serialisation (json, pickle, zlib)"),
    ("/pickle", "serialisation (json, pickle, zlib)"),
    ("/concurrent/", "threads (send pool)"),
    ("/threading.py", "threads (send pool)"),
    ("/queue.py", "threads (send pool)"),
)


def library(func: tuple[str, int, str]) -> str | None:
    filename, _, name = func
    if filename == "~":  # a builtin: decided by its caller
        if any(x in name for x in ("orjson", "pickle", "zlib", "_json")):
            return "serialisation (json, pickle, zlib)"
        return None
    for needle, label in LIBRARIES:
        if needle in filename:
            return label
    return "other (stdlib)"


def by_library(stats: pstats.Stats) -> Counter:
    totals: Counter = Counter()
    for func, (_, _, tottime, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        label = library(func)
        if label is not None:
            totals[label] += tottime
            continue
        # A builtin (socket I/O, dict ops...): its time per caller, to the caller's library.
        for caller, (_, _, caller_tt, _) in callers.items():
            totals[library(caller) or "other (stdlib)"] += caller_tt
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--worker-class", default="batch", choices=("batch", "simple"))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--bots", type=int, default=10)
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args()

    with running_servers(WORK) as servers:
        pg = servers.pg
        tg_port = free_port()
        env = servers.env(
            GRIMBOTS_LOG_LEVEL="INFO", GRIMBOTS_TELEGRAM_API_URL=f"http://127.0.0.1:{tg_port}"
        )
        subprocess.run([GRIMBOTS, "db", "upgrade"], env=env, check=True, capture_output=True)
        bots = [{**b, "path": ""} for b in seed_bots(env, args.bots, "cpu")]
        command = [GRIMBOTS, "sandbox", "telegram", "--port", str(tg_port)]
        servers.procs.spawn("telegram", command, env)
        wait_until(lambda: port_open(tg_port), 20, "the Telegram stand-in")
        os.environ.update(env)

        from grimbots.bot_secrets import BotSecretCache, database_loader
        from grimbots.logs import configure_logging
        from grimbots.queues import TASKS, get_queue
        from grimbots.services import init_services
        from grimbots.settings import load_settings
        from grimbots.telegram_ingest import TelegramIngest
        from rq import SimpleWorker

        try:
            from grimbots.worker import WORKER_CLASSES
        except ImportError:  # before grimbots.worker had BatchWorker
            WORKER_CLASSES = {"simple": SimpleWorker}

        settings = load_settings(env)
        sys.stderr = open(WORK / "worker.log", "w")  # noqa: SIM115 - the worker's log, as journald
        configure_logging("INFO")
        services = init_services(settings)
        ingest = TelegramIngest(settings, BotSecretCache(database_loader(services.db)))
        connection = services.redis.raw
        worker = WORKER_CLASSES[args.worker_class](
            [get_queue(TASKS, connection)], connection=connection, name=f"cpu.{os.getpid()}"
        )
        if args.batch_size is not None:
            worker.batch_size = args.batch_size

        def enqueue(step: int, count: int) -> None:
            traffic = Traffic(bots, rate=count / 10, step=step)
            for i in range(count):
                bot, body = traffic.update_of(i)
                answer = ingest.handle(
                    bot["id"], bot["secret"], str(len(body)), lambda n, b=body: b
                )
                assert answer.status == 200, answer

        def counters() -> tuple[int, int]:
            with psycopg.connect(pg.dsn("bench"), autocommit=True) as conn:
                (xacts,) = conn.execute(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                    " WHERE datname = 'bench'"
                ).fetchone()
            return connection.info("stats")["total_commands_processed"], xacts

        enqueue(0, 100)  # warm-up: imports, pools, caches, first INSERTs
        worker.work(burst=True, logging_level="INFO")
        enqueue(1, args.updates)
        redis_before, pg_before = counters()
        profiler = cProfile.Profile(time.process_time) if args.cprofile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        worker.work(burst=True, logging_level="INFO")
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        redis_after, pg_after = counters()
        replies = len(
            services.telegram.client.get(
                f"http://127.0.0.1:{tg_port}/_sandbox/calls", params={"method": "sendMessage"}
            ).json()["calls"]
        )
        n = args.updates
        out = sys.__stdout__
        print(
            f"# {args.worker_class} worker"
            + (f", batch size {worker.batch_size}" if hasattr(worker, "batch_size") else "")
            + f", {n} updates, load {os.getloadavg()[0]:.2f}",
            file=out,
        )
        print(
            f"worker CPU per update {1000 * cpu / n:.2f} ms (wall {1000 * wall / n:.2f} ms); "
            f"{(redis_after - redis_before) / n:.1f} Redis commands and "
            f"{(pg_after - pg_before) / n:.2f} PostgreSQL transactions per update; "
            f"{replies} replies (both steps)",
            file=out,
        )
        if profiler:
            stats = pstats.Stats(profiler)
            totals = by_library(stats)
            profiled = sum(totals.values())
            print("\n| where (self time, CPU clock) | ms per update | share |", file=out)
            print("|---|---|---|", file=out)
            for label, seconds in totals.most_common():
                print(
                    f"| {label} | {1000 * seconds / n:.2f} | {100 * seconds / profiled:.0f} % |",
                    file=out,
                )
            print(
                f"\n(profiled {1000 * profiled / n:.2f} ms per update; cProfile's own overhead "
                f"inflates Python-heavy code, so read shares, not absolute times)",
                file=out,
            )
            stats.dump_stats(str(Path(tempfile.gettempdir()) / "worker_cpu.prof"))


if __name__ == "__main__":
    main()
