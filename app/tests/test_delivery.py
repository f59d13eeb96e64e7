"""Sending through the outbox under Telegram's failure modes, with real worker processes."""

from __future__ import annotations

import time

import orjson
import pytest
from grimbots.jobs.maintenance import sweep_abandoned
from grimbots.lab.servers import wait_until
from grimbots.models import Lead, OutboxMessage
from grimbots.queues import (
    JOB_TIMEOUT_SECONDS,
    PROCESS_UPDATE,
    TASKS,
    UPDATE_RETRY,
    update_job_id,
)
from rq import Queue
from rq.job import Job
from sqlalchemy import select
from support import start_message, wait_drained


@pytest.fixture
def enqueue_update(bot, services):
    """Queue a /start update the way the webhook does (same job id and arguments)."""

    def enqueue(update_id: int, user_id: int) -> str:
        update_json = orjson.dumps(start_message(update_id, user_id)).decode()
        job_id = update_job_id(bot.id, update_id)
        Queue(TASKS, connection=services.redis.raw).enqueue(
            PROCESS_UPDATE, bot.id, update_id, update_json, job_id=job_id
        )
        return job_id

    return enqueue


def outbox_row(services, chat_id: int) -> OutboxMessage | None:
    with services.db.session() as session:
        return session.scalar(select(OutboxMessage).where(OutboxMessage.chat_id == chat_id))


def finished(services, job_id: str) -> bool:
    return Job.fetch(job_id, connection=services.redis.raw).get_status() in ("finished", "failed")


def test_429_waits_retry_after_then_sends_once(enqueue_update, telegram, start_worker, services):
    telegram.faults(status_429={"count": 1, "retry_after": 1})
    start_worker(TASKS)
    job_id = enqueue_update(1, user_id=801)
    wait_until(lambda: finished(services, job_id), what="job done")
    calls = telegram.calls("sendMessage", chat_id=801)
    assert [c["status"] for c in calls] == [429, 200]
    assert calls[1]["time"] - calls[0]["time"] >= 1.0  # honoured retry_after
    row = outbox_row(services, 801)
    assert (row.status, row.attempts) == ("sent", 2)


def test_403_marks_lead_blocked_without_retrying(enqueue_update, telegram, start_worker, services):
    telegram.faults(blocked_chat_ids=[802])
    start_worker(TASKS)
    job_id = enqueue_update(2, user_id=802)
    wait_until(lambda: finished(services, job_id), what="job done")
    wait_drained(services)  # a retry would be a job still queued or scheduled
    assert [c["status"] for c in telegram.calls("sendMessage", chat_id=802)] == [403]
    row = outbox_row(services, 802)
    assert row.status == "failed" and row.error.startswith("403")
    with services.db.session() as session:
        assert session.scalar(select(Lead.blocked).where(Lead.chat_id == 802)) is True


def test_500_is_retried_and_sent_once(enqueue_update, telegram, start_worker, services):
    telegram.faults(status_500={"count": 2})
    start_worker(TASKS)
    job_id = enqueue_update(3, user_id=803)
    wait_until(lambda: finished(services, job_id), what="job done")
    statuses = [c["status"] for c in telegram.calls("sendMessage", chat_id=803)]
    assert statuses == [500, 500, 200]
    assert outbox_row(services, 803).status == "sent"


def test_read_timeout_is_not_resent(enqueue_update, telegram, start_worker, services):
    # The stand-in takes 3 s; the worker gives up reading after 1 s (outcome unknown).
    telegram.faults(slow={"delay": 3, "count": 1})
    start_worker(TASKS, extra_env={"GRIMBOTS_TELEGRAM_READ_TIMEOUT_SECONDS": "1"})
    job_id = enqueue_update(4, user_id=804)
    wait_until(lambda: finished(services, job_id), what="job done")
    row = outbox_row(services, 804)
    assert row.status == "failed" and "unknown" in row.error
    wait_drained(services)
    assert len(telegram.calls("sendMessage", chat_id=804)) == 1


def test_worker_killed_mid_send_then_rerun_sends_once(
    enqueue_update, telegram, start_worker, services
):
    telegram.faults(slow={"delay": 2, "count": 1})
    worker = start_worker(TASKS)
    job_id = enqueue_update(5, user_id=805)
    # The call has reached Telegram (recorded on arrival) and the worker is waiting on it.
    wait_until(lambda: telegram.calls("sendMessage", chat_id=805), what="call in flight")
    worker.kill()
    assert outbox_row(services, 805).status == "sending"

    # Re-run the very same job, as RQ's abandoned-job handling or an operator would: the
    # killed worker's execution leaves the started registry, the job goes back on the queue.
    queue = Queue(TASKS, connection=services.redis.raw)
    job = Job.fetch(job_id, connection=services.redis.raw)
    queue.started_job_registry.remove_executions(job)
    queue.enqueue_job(job)
    start_worker(TASKS)
    wait_until(
        lambda: Job.fetch(job_id, connection=services.redis.raw).get_status() == "finished",
        what="re-run finished",
    )
    wait_drained(services)
    assert len(telegram.calls("sendMessage", chat_id=805)) == 1
    assert outbox_row(services, 805).status == "sending"  # outcome unknown: left alone


def test_update_abandoned_by_a_killed_worker_is_run_again(
    webhook, bot, telegram, start_worker, services
):
    """The webhook's job carries retries, so RQ re-runs it after its worker died."""
    telegram.faults(slow={"delay": 3, "count": 1})
    worker = start_worker(TASKS)
    assert webhook(start_message(6, user_id=806)) == 200
    job_id = update_job_id(bot.id, 6)
    wait_until(lambda: telegram.calls("sendMessage", chat_id=806), what="call in flight")
    worker.kill()
    job = Job.fetch(job_id, connection=services.redis.raw)
    assert job.get_status() == "started" and job.retries_left == UPDATE_RETRY.max

    # As the maintenance sweep does once the job's heartbeat has expired.
    assert sweep_abandoned(services.redis.raw, now=time.time() + JOB_TIMEOUT_SECONDS + 61) == 1
    job = Job.fetch(job_id, connection=services.redis.raw)
    assert job.retries_left == UPDATE_RETRY.max - 1
    start_worker(TASKS)
    wait_until(lambda: finished(services, job_id), timeout=30, what="re-run finished")
    assert job.get_status() == "finished"
    # The reply's outcome was unknown (killed mid-call), so the re-run did not send again.
    assert len(telegram.calls("sendMessage", chat_id=806)) == 1
    assert outbox_row(services, 806).status == "sending"
