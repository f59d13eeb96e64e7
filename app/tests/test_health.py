"""GET /health and `grimbots health`: healthy, degraded, unhealthy."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import orjson
import pytest
from grimbots.health import RecentCheck
from grimbots.lab.servers import GRIMBOTS, RedisServer, free_port, wait_until
from grimbots.queues import ALL_QUEUES
from grimbots.services import init_services
from grimbots.settings import load_settings
from grimbots.web import create_wsgi_app
from werkzeug.test import Client


def _health(settings) -> tuple[int, dict]:
    response = Client(create_wsgi_app(settings)).get("/health")
    return response.status_code, orjson.loads(response.get_data())


def test_degraded_when_a_queue_has_no_worker(settings, start_worker):
    status, report = _health(settings)
    assert (status, report["status"]) == (200, "degraded")
    assert report["checks"]["database"]["ok"] and report["checks"]["redis"]["ok"]
    assert report["checks"]["redis"]["pool"]["max_connections"] == 20

    start_worker("tasks", "gateway")
    status, report = _health(settings)
    assert (status, report["status"]) == (200, "degraded")
    assert report["checks"]["queues"]["tasks"]["workers"] == 1
    assert report["checks"]["queues"]["webhook"] == {"workers": 0, "size": 0}


def test_healthy_when_every_queue_has_a_worker(settings, start_worker, env):
    start_worker(*ALL_QUEUES)
    status, report = _health(settings)
    assert (status, report["status"]) == (200, "healthy")
    assert all(report["checks"]["queues"][q]["workers"] == 1 for q in ALL_QUEUES)
    cli = subprocess.run([GRIMBOTS, "health"], env=env, capture_output=True, timeout=30)
    assert cli.returncode == 0 and orjson.loads(cli.stdout)["status"] == "healthy"


@pytest.mark.parametrize("down", ["redis", "database"])
def test_unhealthy_when_redis_or_database_is_down(down, env):
    closed = free_port()  # nothing listens there
    if down == "redis":
        env = env | {"GRIMBOTS_REDIS_URL": f"redis://127.0.0.1:{closed}/0"}
    else:
        env = env | {"GRIMBOTS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{closed}/x"}
    started = time.monotonic()
    status, report = _health(load_settings(env))
    assert time.monotonic() - started < 5, "health must stay fast when a dependency is down"
    assert (status, report["status"]) == (503, "unhealthy")
    assert report["checks"][down]["ok"] is False
    cli = subprocess.run([GRIMBOTS, "health"], env=env, capture_output=True, timeout=30)
    assert cli.returncode == 1 and orjson.loads(cli.stdout)["status"] == "unhealthy"


def test_killed_worker_does_not_count(settings, start_worker, redis_client):
    worker = start_worker(*ALL_QUEUES)
    worker.kill()
    # RQ leaves the SIGKILLed worker in its registry until maintenance; its own key
    # expires with the heartbeat. Simulate that expiry instead of waiting minutes for it.
    for key in redis_client.smembers("rq:workers"):
        redis_client.delete(key)
    _, report = _health(settings)
    assert report["status"] == "degraded"
    assert report["checks"]["queues"]["tasks"]["workers"] == 0


def test_keeps_the_seed_fields(settings):
    """status, timestamp (UTC ISO 8601) and version: what operators' scripts read."""
    from datetime import UTC, datetime

    from grimbots import __version__

    _, report = _health(settings)
    assert report["version"] == __version__
    stamp = datetime.fromisoformat(report["timestamp"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None and stamp.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 5
    assert report["status"] in ("healthy", "degraded")
    assert set(report["checks"]) >= {"database", "redis", "queues", "failed_jobs", "maintenance"}


def test_a_report_older_than_stale_after_is_replaced_in_place(settings):
    """A process nobody asked for a while checks afresh: its old report is neither the
    answer nor a reason to answer unhealthy (stale_after 0: every report is too old)."""
    recent = RecentCheck(init_services(settings), max_age=0.0, stale_after=0.0)
    first = recent.check()
    second = recent.check()
    assert second is not first
    assert second[0] == first[0] == "degraded"  # no workers in this test


def test_answers_from_the_newest_report_while_a_probe_hangs(env, tmp_path):
    """A paused Redis (SIGSTOP: it accepts, never answers) holds the refresh for the
    client's socket timeout. /health answers meanwhile with the report it had, then
    unhealthy once the refresh has run longer than stale_after, and unhealthy after the
    refresh: the host leaves rotation for a hung dependency, not for a slow one."""
    server = RedisServer(tmp_path)
    server.start()
    services = init_services(load_settings(env | {"GRIMBOTS_REDIS_URL": server.url}))
    recent = RecentCheck(services, max_age=0.0, stale_after=1.0)
    try:
        before = recent.check()  # the first report is computed in place
        assert before[0] == "degraded"  # no workers in this test
        os.kill(server.pid, signal.SIGSTOP)
        assert recent.check() is before  # a refresh started; the answer did not wait for it

        def answer_when(stale: bool):
            answer = recent.check()
            return answer if ("error" in answer[1]) == stale else None

        status, report = wait_until(
            lambda: answer_when(stale=True),
            timeout=2.5,
            what="the answer while the refresh hangs, once the report is stale",
        )
        assert status == report["status"] == "unhealthy"
        assert report["error"].startswith("the health probes have not finished")
        assert report["timestamp"] == before[1]["timestamp"]
        status, report = wait_until(
            lambda: answer_when(stale=False),
            timeout=10,
            what="the refresh's own report (Redis timed out)",
        )
        assert (status, report["checks"]["redis"]["ok"]) == ("unhealthy", False)
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.stop()
