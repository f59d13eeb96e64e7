"""The real servers the tests and the benchmarks start: redis-server (and Sentinel), a
throwaway PostgreSQL 15 cluster, gunicorn with the project's config and other subprocesses
with their output in a file, on free 127.0.0.1 ports; the app's environment for them; and
the one way to wait for them.

Used by app/tests (conftest.py and the tests) and app/bench (servers.py and the scripts).
Everything listens on 127.0.0.1 only.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis

BIN = Path(sys.executable).parent  # the virtualenv's: its grimbots and gunicorn commands
GRIMBOTS = str(BIN / "grimbots")
GUNICORN = str(BIN / "gunicorn")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN_TOKEN = "lab-admin-token-0123456789-abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.05,
) -> Any:
    """Poll predicate() until it returns something truthy, and return that.

    An exception counts as not yet (a server still starting); after `timeout` seconds an
    AssertionError names `what` and the last exception (a test fails, a script stops).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})"
    )


class Process:
    """A subprocess in its own process group, its output in a file, stopped by the caller."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        stop_signal: signal.Signals = signal.SIGTERM,
    ):
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (a worker and its scheduler child, say)."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def gunicorn_command(*ports: int, workers: int) -> list[str]:
    """gunicorn with the project's config (grimbots.gunicorn_conf), bound to 127.0.0.1 on
    each port (a second one: the operator listener, with GRIMBOTS_OPS_PORT)."""
    binds = [arg for port in ports for arg in ("--bind", f"127.0.0.1:{port}")]
    return [
        GUNICORN,
        "-c",
        "python:grimbots.gunicorn_conf",
        "grimbots.wsgi:app",
        *binds,
        "--workers",
        str(workers),
    ]


def app_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The app's environment, for load_settings() or a subprocess: this process's, without
    any GRIMBOTS_* or PROMETHEUS_MULTIPROC_DIR of its own, plus the database, Redis, the
    lab's admin token and `extra`."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRIMBOTS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    return {
        **inherited,
        "GRIMBOTS_DATABASE_URL": database_url,
        "GRIMBOTS_REDIS_URL": redis_url,
        "GRIMBOTS_ADMIN_TOKEN": ADMIN_TOKEN,
        **extra,
    }


class RedisServer:
    """redis-server on a free port, no persistence; extra_args (--replicaof PORT, say) and
    a password (for the replication and Sentinel tests)."""

    def __init__(self, workdir: Path, *extra_args: str, password: str | None = None):
        self.port = free_port()
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5)

    def start(self) -> None:
        auth = ["--requirepass", self.password, "--masterauth", self.password]
        self._spawn(
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
            *(auth if self.password else []),
            *self.extra_args,
        )

    def _spawn(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: self.client().ping(), timeout=10, what=f"redis-server on port {self.port}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last fsync, sockets reset (a crashed primary)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class SentinelServer(RedisServer):
    """`redis-server --sentinel` on a free port, watching the primary `master` at
    primary_port (quorum 2), with its config file in workdir."""

    def __init__(
        self, workdir: Path, primary_port: int, master: str, password: str, down_after_ms: int
    ):
        super().__init__(workdir)
        self.conf = workdir / f"sentinel-{self.port}.conf"
        self.primary_port = primary_port
        self.master = master
        self.master_password = password
        self.down_after_ms = down_after_ms

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def start(self) -> None:
        # Sentinel rewrites its own file (its id, the replicas and Sentinels it found).
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {self.master} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master} 10000\n"
            f"sentinel auth-pass {self.master} {self.master_password}\n"
            f"logfile {self.workdir}/sentinel-{self.port}.log\n"
        )
        self._spawn(str(self.conf), "--sentinel")


class PostgresCluster:
    """A throwaway PostgreSQL 15 cluster on a free port (initdb refuses root, so as root it
    runs as `postgres`). synchronous_commit=off, as a queue-fed app would run it (a crash
    loses the last few hundred ms of commits, never consistency); start() takes more."""

    def __init__(self):
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="grimbots-pg-"))
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, cwd="/")

    def start(self, settings: str = "") -> None:
        """initdb and start; `settings`: more `-c name=value` for postgres."""
        initdb = (str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres")
        self._run(*initdb, "--auth=trust", "--no-sync", "-E", "UTF8")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            f"-c max_connections=200 -c synchronous_commit=off {settings}"
        )
        log = str(self.root / "postgres.log")
        pg_ctl = (str(PG_BIN / "pg_ctl"), "-D", str(self.data))
        self._run(*pg_ctl, "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        pg_ctl = (str(PG_BIN / "pg_ctl"), "-D", str(self.data))
        subprocess.run(
            [*self.as_user, *pg_ctl, "-m", "immediate", "stop"], capture_output=True, cwd="/"
        )
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def pid(self) -> int:
        """The postmaster (its children are the backends and background workers)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of a database (GRIMBOTS_DATABASE_URL)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn("postgres"), autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        with self.admin() as conn:
            suffix = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{suffix}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
