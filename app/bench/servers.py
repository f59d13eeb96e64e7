"""What the benchmarks start and measure: free ports, redis-server, a throwaway PostgreSQL
15 cluster, logged subprocesses, and CPU time of process trees from /proc.

Shared by ingest.py, payments.py and e2e.py (scripts, not tests: they print numbers for
docs/benchmarks.md). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

BIN = Path(sys.executable).parent
GRIMBOTS = str(BIN / "grimbots")
GUNICORN = str(BIN / "gunicorn")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


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
        self.started: list[subprocess.Popen] = []

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started.append(proc)
        return proc

    def stop_all(self, sig: signal.Signals = signal.SIGTERM) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc in self.started:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.started.clear()


class RedisServer:
    """redis-server on a free port, no persistence (a benchmark's queue is throwaway)."""

    def __init__(self, workdir: Path, replica_of: int | None = None):
        self.port = free_port()
        self.workdir = workdir
        self.replica_of = replica_of  # the port of a local primary to follow
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *(["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class PostgresCluster:
    """A throwaway PostgreSQL 15 cluster (initdb refuses root, so as root it runs as
    `postgres`). fsync stays on; synchronous_commit=off, as a queue-fed app would run it
    (a crash loses the last few hundred ms of commits, never consistency)."""

    def __init__(self):
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="grimbots-bench-pg-"))
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, cwd="/")

    def start(self, dbname: str = "bench", options: str = "") -> str:
        """Start the cluster and create `dbname`; returns its SQLAlchemy URL.
        `options`: more postgres -c settings."""
        import psycopg

        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            f"-c max_connections=200 -c synchronous_commit=off {options}"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {dbname}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    @property
    def pid(self) -> int:
        """The postmaster (its children are the backends and background workers)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        subprocess.run(
            [
                *self.as_user,
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            cwd="/",
        )
        shutil.rmtree(self.root, ignore_errors=True)


def app_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The app's environment: this one's minus any GRIMBOTS_* of the caller, plus these."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GRIMBOTS_")},
        "GRIMBOTS_DATABASE_URL": database_url,
        "GRIMBOTS_REDIS_URL": redis_url,
        "GRIMBOTS_ADMIN_TOKEN": "bench-admin-token-0123456789-abcdef",
        # A benchmark drives one bot far past its admission limit (grimbots.telegram_ingest).
        "GRIMBOTS_BOT_ADMISSION_PER_SECOND": "0",
        **extra,
    }


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


def gunicorn_command(port: int, workers: int) -> list[str]:
    """gunicorn with the project's config (grimbots.gunicorn_conf) on 127.0.0.1:port."""
    return [
        GUNICORN,
        "-c",
        "python:grimbots.gunicorn_conf",
        "grimbots.wsgi:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
    ]
