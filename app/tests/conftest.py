"""Real servers for the tests: redis-server, PostgreSQL, the Telegram stand-in, and helpers
to run `grimbots worker` and gunicorn as subprocesses. Nothing is faked."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from grimbots.lab.sandbox.telegram import start_in_thread
from grimbots.migrate import upgrade
from grimbots.models import Bot, Offer
from grimbots.services import Services, init_services
from grimbots.settings import Settings, load_settings
from pix_fixtures import PIX_KEY, WEBHOOK_SECRET, start_sandbox
from support import GRIMBOTS, GUNICORN, Process, free_port, port_open, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN_TOKEN = "test-admin-token-0123456789-abcdef"
TEMPLATE_DB = "grimbots_template"


# --- Redis -----------------------------------------------------------------------------


class RedisServer:
    """redis-server on a free port; extra_args (e.g. --replicaof) and a password for HA tests."""

    def __init__(self, workdir: Path, *extra_args: str, password: str | None = None):
        self.port = free_port()
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5)

    def start(self) -> None:
        auth = ["--requirepass", self.password, "--masterauth", self.password]
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
                *(auth if self.password else []),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.client().ping(), timeout=10, message="redis-server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last fsync, sockets reset (a crashed primary)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def redis_client(redis_server) -> redis.Redis:
    return redis_server.client()


# --- PostgreSQL ------------------------------------------------------------------------


class PostgresCluster:
    """A throwaway cluster. initdb refuses to run as root, so as root it runs as `postgres`."""

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

    def start(self) -> None:
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "postgres.log"),
            "-w",
            "start",
        )

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

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        )

    def create_database(self, name: str, template: str | None = None) -> str:
        with self.admin() as conn:
            suffix = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{suffix}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres():
    cluster = PostgresCluster()
    try:
        cluster.start()
        # Migrate once into a template; each test gets a copy (CREATE DATABASE ... TEMPLATE).
        upgrade(cluster.create_database(TEMPLATE_DB))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def database_url(postgres):
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name, template=TEMPLATE_DB)
    yield url
    postgres.drop_database(name)


# --- Telegram stand-in -----------------------------------------------------------------


class Telegram:
    def __init__(self, server):
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def calls(
        self, method: str | None = None, chat_id: int | None = None, status: int | None = None
    ) -> list[dict]:
        params = {k: v for k, v in {"method": method, "chat_id": chat_id}.items() if v is not None}
        calls = httpx.get(f"{self.url}/_sandbox/calls", params=params).json()["calls"]
        return [c for c in calls if status is None or c["status"] == status]

    def faults(self, **spec) -> None:
        httpx.post(f"{self.url}/_sandbox/faults", json=spec).raise_for_status()


@pytest.fixture(scope="session")
def telegram_server():
    server = start_in_thread()
    yield server
    server.shutdown()


@pytest.fixture
def telegram(telegram_server) -> Telegram:
    sandbox = Telegram(telegram_server)
    httpx.delete(f"{sandbox.url}/_sandbox/calls").raise_for_status()
    return sandbox


# --- PSP stand-in ----------------------------------------------------------------------


class Psp:
    def __init__(self, server):
        self.server = server
        self.url = server.base_url
        self.config = server.state.config

    def _get(self, path: str, key: str, **params) -> list[dict]:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()[key]

    def charges(self, **params) -> list[dict]:
        return self._get("/_sandbox/charges", "charges", **params)

    def calls(self, **params) -> list[dict]:
        return self._get("/_sandbox/calls", "calls", **params)

    def notifications(self) -> list[dict]:
        return self._get("/_sandbox/notifications", "notifications")

    def pay(self, **spec) -> dict:
        response = httpx.post(f"{self.url}/_sandbox/pay", json=spec, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def expire(self, txid: str) -> None:
        httpx.post(f"{self.url}/_sandbox/expire", json={"txid": txid}).raise_for_status()

    def faults(self, **spec) -> None:
        httpx.post(f"{self.url}/_sandbox/faults", json=spec).raise_for_status()


@pytest.fixture(scope="session")
def psp_server():
    server = start_sandbox()
    yield server
    server.close()


@pytest.fixture
def psp(psp_server) -> Psp:
    httpx.delete(f"{psp_server.base_url}/_sandbox/calls").raise_for_status()
    httpx.delete(f"{psp_server.base_url}/_sandbox/charges").raise_for_status()
    return Psp(psp_server)


# --- The app ---------------------------------------------------------------------------


@pytest.fixture
def env(database_url, redis_url, telegram, psp) -> dict[str, str]:
    """Environment for the app, in-process (via `settings`) or in subprocesses."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRIMBOTS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    return {
        **base,
        "GRIMBOTS_DATABASE_URL": database_url,
        "GRIMBOTS_REDIS_URL": redis_url,
        "GRIMBOTS_ADMIN_TOKEN": ADMIN_TOKEN,
        "GRIMBOTS_TELEGRAM_API_URL": telegram.url,
        "GRIMBOTS_TELEGRAM_READ_TIMEOUT_SECONDS": "2",
        "GRIMBOTS_LOG_LEVEL": "INFO",
        "GRIMBOTS_PIX_BASE_URL": psp.url,
        "GRIMBOTS_PIX_CLIENT_ID": psp.config.client_id,
        "GRIMBOTS_PIX_CLIENT_SECRET": psp.config.client_secret,
        "GRIMBOTS_PIX_KEY": PIX_KEY,
        "GRIMBOTS_PIX_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GRIMBOTS_PIX_READ_TIMEOUT_SECONDS": "2",
    }


def without_psp(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("GRIMBOTS_PIX_")}


@pytest.fixture
def settings(env) -> Settings:
    return load_settings(env)


@pytest.fixture
def services(settings) -> Services:
    services = init_services(settings)
    yield services
    services.db.dispose()


@dataclass
class BotInfo:
    id: int
    token: str
    token_id: int  # the numeric part of the token, which the stand-in records as bot_id
    secret: str
    offer_id: int


@pytest.fixture
def bot(services) -> BotInfo:
    token_id = secrets.randbelow(10**9) + 10**9
    token = f"{token_id}:{secrets.token_urlsafe(24)}"
    secret = secrets.token_urlsafe(24)
    with services.db.session() as session:
        row = Bot(
            name=f"bot-{token_id}",
            token=token,
            webhook_secret=secret,
            welcome_text="Welcome to the shop!",
        )
        session.add(row)
        session.flush()
        offer = Offer(
            bot_id=row.id, name="Gold", price_cents=1990, access_link="https://t.me/+gold"
        )
        session.add(offer)
        session.flush()
        return BotInfo(row.id, token, token_id, secret, offer.id)


@pytest.fixture
def start_worker(env, tmp_path, redis_client):
    """start_worker("tasks", ...) -> a running `grimbots worker` subprocess, registered."""
    started: list[Process] = []

    def start(*queues: str, extra_env: dict[str, str] | None = None) -> Process:
        log = tmp_path / f"worker-{len(started)}.log"
        proc = Process([GRIMBOTS, "worker", *queues], {**env, **(extra_env or {})}, log)
        started.append(proc)
        # RQ registers the worker (SADD rq:workers:<queue>) once it is ready to dequeue.
        wait_for(
            lambda: any(
                f".{proc.pid}." in m.decode()
                for m in redis_client.smembers(f"rq:workers:{queues[0]}")
            ),
            timeout=20,
            message=f"worker {proc.pid} registration; log: {log}",
        )
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_web(env, tmp_path):
    """start_web(workers=3) -> base URL of gunicorn running the real config."""
    started: list[Process] = []

    def start(workers: int = 3, extra_env: dict[str, str] | None = None) -> str:
        port = free_port()
        proc = Process(
            [
                GUNICORN,
                "-c",
                "python:grimbots.gunicorn_conf",
                "grimbots.wsgi:app",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
            ],
            {**env, **(extra_env or {})},
            tmp_path / f"gunicorn-{port}.log",
            # Quick shutdown: a graceful one waits for the stand-ins' keep-alive connections.
            stop_signal=signal.SIGINT,
        )
        started.append(proc)
        wait_for(lambda: port_open(port), timeout=20, message="gunicorn listening")
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def webhook(settings, bot):
    """post(update) through the production WSGI stack, in-process."""
    from grimbots.web import create_wsgi_app
    from werkzeug.test import Client

    client = Client(create_wsgi_app(settings))

    def post(update: dict) -> int:
        import orjson

        return client.post(
            f"/webhook/telegram/{bot.id}",
            data=orjson.dumps(update),
            headers={"X-Telegram-Bot-Api-Secret-Token": bot.secret},
            content_type="application/json",
        ).status_code

    return post
