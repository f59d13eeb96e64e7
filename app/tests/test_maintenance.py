"""The always-on maintenance sweep: no accepted update is dropped, even past its retries."""

from __future__ import annotations

import time

import orjson
from grimbots.jobs import maintenance
from grimbots.lab.servers import wait_until
from grimbots.models import InboundUpdate
from grimbots.queues import TASKS, update_job_id
from grimbots.settings import load_settings
from grimbots.web import create_wsgi_app
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from support import count, start_message
from werkzeug.test import Client


def set_connections(postgres, database_url: str, allowed: bool) -> None:
    """Make the test's database refuse (or accept again) every new connection."""
    name = database_url.rsplit("/", 1)[1]
    with postgres.admin() as conn:
        conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allowed).lower()}")
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )


def health(env) -> dict:
    response = Client(create_wsgi_app(load_settings(env))).get("/health")
    return orjson.loads(response.get_data())


def test_requeue_delay_doubles_up_to_half_an_hour():
    assert [maintenance.requeue_delay(n) for n in range(7)] == [60, 120, 240, 480, 960, 1800, 1800]


def test_update_failing_past_its_retries_is_processed_once_when_the_database_is_back(
    webhook, bot, telegram, start_worker, services, postgres, database_url, env
):
    raw = services.redis.raw
    job_id = update_job_id(bot.id, 900)
    assert webhook(start_message(900, user_id=990)) == 200  # accepted, no worker yet
    set_connections(postgres, database_url, allowed=False)
    services.db.dispose()
    start_worker(TASKS)

    # RQ retries the job after 0, 10 and 60 s; instead of waiting that out, each scheduled
    # retry is made due at once (as time passing would), and the real scheduler runs it.
    failed = FailedJobRegistry(TASKS, connection=raw)
    scheduled = ScheduledJobRegistry(TASKS, connection=raw)

    def failed_for_good() -> bool:
        if job_id in scheduled:
            raw.zadd(scheduled.key, {job_id: 0})
        return job_id in failed

    wait_until(failed_for_good, timeout=60, what="the job to use up its retries")
    assert Job.fetch(job_id, connection=raw).retries_left == 0
    assert telegram.calls("sendMessage", chat_id=990) == []

    # Back: /health counts the failed job at once, and is degraded once it is older than
    # the threshold (the sweep leaves it alone for a minute after its last failure).
    set_connections(postgres, database_url, allowed=True)
    report = health(env | {"GRIMBOTS_HEALTH_FAILED_JOB_SECONDS": "1"})
    assert report["checks"]["failed_jobs"][TASKS]["count"] == 1
    wait_until(
        lambda: health(env | {"GRIMBOTS_HEALTH_FAILED_JOB_SECONDS": "1"})["status"] == "degraded",
        what="health degraded by the failed job",
    )
    assert maintenance.sweep(services)["failed jobs requeued"] == 0  # not a minute old yet
    assert maintenance.sweep(services, now=time.time() + 61)["failed jobs requeued"] == 1
    wait_until(
        lambda: Job.fetch(job_id, connection=raw).get_status() == "finished",
        timeout=30,
        what="the re-queued job to finish",
    )
    assert len(telegram.calls("sendMessage", chat_id=990)) == 1
    assert count(services, InboundUpdate, bot_id=bot.id, update_id=900) == 1
    assert health(env)["checks"]["failed_jobs"][TASKS] == {"count": 0, "oldest_seconds": None}
    stats = maintenance.stats(raw)
    assert stats["requeued:tasks"] == 1 and stats["last_run"] > 0
    # Counted in /metrics too, summed over every host's sweeps.
    text = Client(create_wsgi_app(load_settings(env))).get("/metrics").get_data(as_text=True)
    assert 'grimbots_maintenance_requeued_jobs_total{queue="tasks"} 1.0' in text
    assert "grimbots_maintenance_last_run_timestamp_seconds " in text


def test_a_job_failing_again_waits_twice_as_long(bot, services, start_worker, redis_client):
    """Re-queued and failed again: the next try waits 2 minutes, not 1."""
    from grimbots.queues import get_queue

    queue = get_queue(TASKS, services.redis.raw)
    queue.enqueue("grimbots.jobs.no_such_job", job_id="broken-1")  # fails on every run
    start_worker(TASKS)
    failed = FailedJobRegistry(TASKS, connection=services.redis.raw)
    wait_until(lambda: "broken-1" in failed, what="first failure")
    assert maintenance.requeue_failed(services.redis.raw, now=time.time() + 61) == {TASKS: 1}
    wait_until(lambda: "broken-1" in failed, what="second failure")
    assert maintenance.requeue_failed(services.redis.raw, now=time.time() + 61) == {}
    assert maintenance.requeue_failed(services.redis.raw, now=time.time() + 121) == {TASKS: 1}
