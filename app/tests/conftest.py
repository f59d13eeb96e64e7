"""Real servers for the tests: redis-server, PostgreSQL (grimbots.lab.servers), both
stand-ins, and fixtures to run `grimbots worker` and gunicorn as subprocesses. Nothing is
faked."""

from __future__ import annotations

import secrets
import signal
import uuid
from dataclasses import dataclass

import httpx
import pytest
import redis
from grimbots.lab.sandbox.telegram import start_in_thread
from grimbots.lab.servers import (
    GRIMBOTS,
    PostgresCluster,
    Process,
    RedisServer,
    app_env,
    free_port,
    gunicorn_command,
    port_open,
    wait_until,
)
from grimbots.migrate import upgrade
from grimbots.models import Bot, Offer
from grimbots.services import Services, init_services
from grimbots.settings import Settings, load_settings
from pix_fixtures import PIX_KEY, WEBHOOK_SECRET, adapter_for, start_sandbox

TEMPLATE_DB = "grimbots_template"
# The tests' databases are throwaway: nothing is flushed to disk.
NOT_DURABLE = "-c fsync=off -c full_page_writes=off"


# --- Redis -----------------------------------------------------------------------------


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


@pytest.fixture(scope="session")
def postgres():
    cluster = PostgresCluster()
    try:
        cluster.start(NOT_DURABLE)
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


# A stand-in of its own per test and the adapter pointed at it, for the test_pix_* tests that
# drive the PSP's API directly (faults, expiries, callbacks to a receiver).


@pytest.fixture
def sandbox():
    server = start_sandbox()
    yield server
    server.close()


@pytest.fixture
def adapter_read_timeout() -> float:
    return 2.0


@pytest.fixture
def adapter(sandbox, adapter_read_timeout):
    adapter = adapter_for(sandbox, read_timeout=adapter_read_timeout)
    yield adapter
    adapter.close()


# --- The app ---------------------------------------------------------------------------


@pytest.fixture
def env(database_url, redis_url, telegram, psp) -> dict[str, str]:
    """Environment for the app, in-process (via `settings`) or in subprocesses."""
    return app_env(
        database_url,
        redis_url,
        GRIMBOTS_TELEGRAM_API_URL=telegram.url,
        GRIMBOTS_TELEGRAM_READ_TIMEOUT_SECONDS="2",
        GRIMBOTS_LOG_LEVEL="INFO",
        GRIMBOTS_PIX_BASE_URL=psp.url,
        GRIMBOTS_PIX_CLIENT_ID=psp.config.client_id,
        GRIMBOTS_PIX_CLIENT_SECRET=psp.config.client_secret,
        GRIMBOTS_PIX_KEY=PIX_KEY,
        GRIMBOTS_PIX_WEBHOOK_SECRET=WEBHOOK_SECRET,
        GRIMBOTS_PIX_READ_TIMEOUT_SECONDS="2",
    )


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
        wait_until(
            lambda: any(
                f".{proc.pid}." in m.decode()
                for m in redis_client.smembers(f"rq:workers:{queues[0]}")
            ),
            timeout=20,
            what=f"worker {proc.pid} registration; log: {log}",
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
            gunicorn_command(port, workers=workers),
            {**env, **(extra_env or {})},
            tmp_path / f"gunicorn-{port}.log",
            # Quick shutdown: a graceful one waits for the stand-ins' keep-alive connections.
            stop_signal=signal.SIGINT,
        )
        started.append(proc)
        wait_until(lambda: port_open(port), timeout=20, what="gunicorn listening")
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
