"""BatchWorker: several Telegram updates per RQ round, each still an RQ job of its own.

The batch path writes RQ's per-job bookkeeping itself (grimbots.worker), so the first test
compares what it leaves in Redis with what RQ's own SimpleWorker leaves for the same kind
of job: an RQ upgrade that changes the format fails here, not in production.
"""

from __future__ import annotations

import re
import time

import orjson
import pytest
from grimbots.jobs.maintenance import sweep_abandoned
from grimbots.lab.servers import wait_until
from grimbots.models import InboundUpdate, OutboxMessage
from grimbots.queues import (
    JOB_TIMEOUT_SECONDS,
    PROCESS_UPDATE,
    TASKS,
    UPDATE_RETRY,
    get_queue,
    update_job_id,
)
from grimbots.worker import BatchWorker
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.results import Result
from support import count, start_message, wait_drained

# Fields whose values differ between any two runs (times, names), not in their presence.
PER_RUN_FIELDS = {
    "created_at",
    "enqueued_at",
    "started_at",
    "ended_at",
    "last_heartbeat",
    "worker_name",
    "data",
    "description",
}


@pytest.fixture
def enqueue(bot, services):
    queue = get_queue(TASKS, services.redis.raw)  # the webhook's job timeout

    def enqueue(
        update_id: int, user_id: int, update_json: str | None = None, retry: bool = True
    ) -> str:
        job_id = update_job_id(bot.id, update_id)
        body = update_json or orjson.dumps(start_message(update_id, user_id)).decode()
        # As the webhook queues it (grimbots.job_hash): with the update's retries.
        retries = UPDATE_RETRY if retry else None
        queue.enqueue(PROCESS_UPDATE, bot.id, update_id, body, job_id=job_id, retry=retries)
        return job_id

    return enqueue


def rq_keys(redis_client, job_ids: list[str]) -> set[str]:
    """Every key RQ keeps, with job ids, execution ids and worker names made generic."""
    keys = set()
    for raw in redis_client.keys("rq:*"):
        key = raw.decode()
        for job_id in job_ids:
            key = key.replace(job_id, "JOB")
        key = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "UUID", key)  # execution ids
        keys.add(re.sub(r"rq:worker:[^:]+", "rq:worker:W", key))
    return keys


def job_fields(redis_client, job_id: str) -> dict[str, bytes | None]:
    """The job's hash: every field, with the values that differ between any two runs
    (times, names, its own arguments) blanked."""
    key = f"rq:job:{job_id}"
    fields = {k.decode(): v for k, v in redis_client.hgetall(key).items()}
    fields = {k: (None if k in PER_RUN_FIELDS else v) for k, v in fields.items()}
    fields["(expires in, s)"] = round(redis_client.ttl(key), -1)  # the result TTL
    return fields


def test_a_batch_leaves_each_job_as_rq_does(enqueue, telegram, services, redis_client):
    queue = Queue(TASKS, connection=services.redis.raw)
    reference = enqueue(1, user_id=901)
    assert SimpleWorker([queue], connection=services.redis.raw).work(burst=True)
    expected_job = job_fields(redis_client, reference)
    assert expected_job["status"] == b"finished"
    expected_keys = rq_keys(redis_client, [reference])
    redis_client.flushall()

    batch = [enqueue(2, user_id=902), enqueue(3, user_id=903), enqueue(4, user_id=904)]
    worker = BatchWorker([queue], connection=services.redis.raw)
    assert worker.work(burst=True)
    for job_id in batch:
        assert job_fields(redis_client, job_id) == expected_job, job_id
        job = Job.fetch(job_id, connection=services.redis.raw)
        assert job.get_status() == JobStatus.FINISHED
        assert Result.fetch_latest(job).type == Result.Type.SUCCESSFUL
        assert job.return_value() == "message"
    # The same keys as after one job (worker keys, registries, results), only more of the
    # per-job ones; nothing left in the started registry or the intermediate list.
    assert rq_keys(redis_client, batch) == expected_keys
    assert sorted(queue.finished_job_registry.get_job_ids()) == sorted(batch)
    assert queue.started_job_registry.get_job_ids() == []
    assert queue.intermediate_queue.get_job_ids() == []
    assert int(redis_client.hget(worker.key, "successful_job_count")) == 3
    # One round did them all: the batch path ends its jobs at one moment.
    assert len({Job.fetch(j, connection=services.redis.raw).ended_at for j in batch}) == 1
    for user_id in (902, 903, 904):
        assert len(telegram.calls("sendMessage", chat_id=user_id)) == 1


def test_a_failing_batch_runs_its_jobs_one_by_one(enqueue, telegram, services):
    queue = Queue(TASKS, connection=services.redis.raw)
    good = [enqueue(10, user_id=910), enqueue(12, user_id=912)]
    bad = enqueue(11, user_id=911, update_json="not json", retry=False)
    assert BatchWorker([queue], connection=services.redis.raw).work(burst=True)
    for job_id in good:
        assert Job.fetch(job_id, connection=services.redis.raw).get_status() == "finished"
    assert Job.fetch(bad, connection=services.redis.raw).get_status() == "failed"
    assert [len(telegram.calls("sendMessage", chat_id=u)) for u in (910, 911, 912)] == [1, 0, 1]


def test_worker_killed_mid_batch_leaves_every_job_for_the_sweep(
    enqueue, bot, telegram, start_worker, services
):
    """Killed while the batch's replies are in flight: each job is abandoned, swept back and
    run again, and no reply is sent twice (their outcome is unknown)."""
    telegram.faults(slow={"delay": 3, "count": 3})
    jobs = [enqueue(20 + i, user_id=920 + i) for i in range(3)]
    worker = start_worker(TASKS)
    wait_until(
        lambda: all(telegram.calls("sendMessage", chat_id=920 + i) for i in range(3)),
        what="three calls in flight at once",
    )
    worker.kill()
    for job_id in jobs:
        assert Job.fetch(job_id, connection=services.redis.raw).get_status() == "started"

    now = time.time() + JOB_TIMEOUT_SECONDS + 61  # as the reconcile does once they expire
    assert sweep_abandoned(services.redis.raw, now=now) == 3
    start_worker(TASKS)
    wait_until(
        lambda: all(
            Job.fetch(j, connection=services.redis.raw).get_status() in ("finished", "failed")
            for j in jobs
        ),
        timeout=30,
        what="re-runs finished",
    )
    wait_drained(services)
    assert [len(telegram.calls("sendMessage", chat_id=920 + i)) for i in range(3)] == [1, 1, 1]
    assert count(services, InboundUpdate, bot_id=bot.id) == 3
    assert count(services, OutboxMessage, bot_id=bot.id, status="sending") == 3
