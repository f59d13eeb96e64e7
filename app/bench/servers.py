"""What the benchmarks start and measure: the servers of one run (grimbots.lab.servers'
redis-server and throwaway PostgreSQL, the subprocesses), the app's environment on them
and its bots, and CPU time of process trees from /proc.

Shared by ingest.py, payments.py, e2e.py and worker_cpu.py (scripts, not tests: they
print numbers for docs/benchmarks.md). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from grimbots.lab.servers import (
    GRIMBOTS,
    PostgresCluster,
    Process,
    RedisServer,
    app_env,
    wait_until,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- CPU time from /proc ----------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, utime + stime in seconds) of every process on the machine."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return table


def tree_cpu(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) of each group's root processes and all their live
    descendants, from one pass over /proc. A process that exits between two snapshots
    takes its share with it, so groups should be long-lived processes (they are here)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    totals = {}
    for name, pids in roots.items():
        seen, stack, total = set(), list(pids), 0.0
        while stack:
            pid = stack.pop()
            if pid in seen or pid not in table:
                continue
            seen.add(pid)
            total += table[pid][1]
            stack.extend(children.get(pid, ()))
        totals[name] = total
    return totals


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """utime + stime of one process and (optionally) all its live descendants."""
    if with_children:
        return tree_cpu({"p": [pid]})["p"]
    return _proc_table().get(pid, (0, 0.0))[1]


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# --- processes ------------------------------------------------------------------------


class Processes:
    """Subprocesses with their output in files under `logs`, stopped in reverse order."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[Process] = []

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> Process:
        proc = Process(command, env, self.logs / f"{name}.log")
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop(timeout=15)
        self.started.clear()


@dataclass
class Servers:
    """One benchmark run's servers and the subprocesses it spawns, their logs in `work`."""

    work: Path
    procs: Processes
    redis: RedisServer
    replicas: list[RedisServer]  # of `redis`
    pg: PostgresCluster | None  # None: SQLite in `work`
    database_url: str

    def env(self, **extra: str) -> dict[str, str]:
        """The app's environment on these servers, Prometheus multiprocess mode on (as in
        production)."""
        prometheus = self.work / "prometheus"
        prometheus.mkdir(exist_ok=True)
        return app_env(
            self.database_url,
            self.redis.url,
            PROMETHEUS_MULTIPROC_DIR=str(prometheus),
            # A benchmark drives one bot far past its admission limit (grimbots.telegram_ingest).
            GRIMBOTS_BOT_ADMISSION_PER_SECOND="0",
            **extra,
        )


@contextmanager
def running_servers(
    work: Path,
    postgres: bool = True,
    pg_settings: str = "",
    redis_replicas: int = 0,
    keep_logs: Path | None = None,
) -> Iterator[Servers]:
    """redis-server (and `redis_replicas` replicas of it, connected) and a throwaway
    PostgreSQL with a `bench` database (without `postgres`, SQLite in `work`); at the end
    every spawned process and server stopped, their logs copied to `keep_logs` if given,
    `work` removed. fsync stays on in PostgreSQL (`pg_settings`: more -c settings)."""
    procs = Processes(work)
    redis_server = RedisServer(work)
    primary = ("--replicaof", "127.0.0.1", str(redis_server.port))
    replicas = [RedisServer(work / f"replica-{i}", *primary) for i in range(redis_replicas)]
    pg = PostgresCluster() if postgres else None
    try:
        redis_server.start()
        for replica in replicas:
            replica.workdir.mkdir()
            replica.start()
        info = redis_server.client().info
        wait_until(
            lambda: info("replication")["connected_slaves"] >= redis_replicas,
            20,
            f"{redis_replicas} replica(s) connected",
        )
        if pg is not None:
            pg.start(pg_settings)
            database_url = pg.create_database("bench")
        else:
            database_url = f"sqlite:///{work}/bench.db"
        yield Servers(work, procs, redis_server, replicas, pg, database_url)
    finally:
        procs.stop_all()
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copy(log, keep_logs / log.name)
        for replica in replicas:
            replica.stop()
        redis_server.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def add_bot(env: dict[str, str], name: str, token: str, secret: str) -> dict:
    """`grimbots bots add`, its credentials on stdin; the CLI's JSON answer."""
    done = subprocess.run(
        [GRIMBOTS, "bots", "add", "--name", name, "--credentials", "-"],
        input=orjson.dumps({"token": token, "secret": secret}),
        env=env,
        check=True,
        capture_output=True,
    )
    return orjson.loads(done.stdout)


def seed_bots(env: dict[str, str], count: int, prefix: str) -> list[dict]:
    """`grimbots bots seed`: bots PREFIX-001.. with an offer each, as its JSON lists them,
    plus each one's `token_id`: bot number k has the token "<900000000 + k>:...", and the
    Telegram stand-in records that number as bot_id."""
    done = subprocess.run(
        [GRIMBOTS, "bots", "seed", "--count", str(count), "--name-prefix", prefix],
        env=env,
        check=True,
        capture_output=True,
    )
    bots = orjson.loads(done.stdout)["bots"]
    return [{**b, "token_id": 900_000_000 + k} for k, b in enumerate(bots, start=1)]
