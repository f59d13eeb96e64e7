"""The webhook's one-round-trip enqueue writes exactly what RQ itself would write."""

from __future__ import annotations

import zlib

import orjson
from grimbots.bot_secrets import BotSecretCache
from grimbots.job_hash import JobHashBuilder
from grimbots.queues import PROCESS_UPDATE, TASKS
from grimbots.telegram_ingest import TelegramIngest
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus


def test_fields_equal_rq_to_dict():
    builder = JobHashBuilder(PROCESS_UPDATE, TASKS)
    args = (7, 123, '{"update_id": 123}')
    reference = builder.reference_job(args, job_id="tg-7-123", description="d").to_dict()
    # Our per-request fields, the way RQ computes them:
    assert zlib.decompress(builder.data(args)) == zlib.decompress(reference.pop("data"))
    for per_request in ("created_at", "enqueued_at", "description"):
        reference.pop(per_request, None)
    expected = {k: (v if isinstance(v, str) else str(v)) for k, v in reference.items()}
    expected["status"] = JobStatus.QUEUED.value
    assert builder.constant_fields == expected


def test_lua_enqueue_is_read_back_and_run_by_rq(settings, redis_client):
    """Enqueue through the webhook's script, then let a real RQ worker load and run it."""
    ingest = TelegramIngest(settings, BotSecretCache(lambda _: "s"))
    # Point the job at a harmless function RQ can import, keeping every other field.
    ingest._jobs.func_name = "json.loads"
    ingest._jobs.data = lambda args: zlib.compress(
        ingest._jobs._serializer.dumps(("json.loads", None, ('{"n": 5}',), {}))
    )
    body = orjson.dumps({"update_id": 5})
    answer = ingest.handle(9, "s", str(len(body)), lambda n: body)
    assert answer.status == 200

    job = Job.fetch("tg-9-5", connection=redis_client)
    assert job.get_status() == JobStatus.QUEUED
    assert job.origin == TASKS and job.timeout == 60
    assert Queue(TASKS, connection=redis_client).job_ids == ["tg-9-5"]
    assert redis_client.sismember("rq:queues", "rq:queue:tasks")

    worker = SimpleWorker([Queue(TASKS, connection=redis_client)], connection=redis_client)
    assert worker.work(burst=True)
    job = Job.fetch("tg-9-5", connection=redis_client)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == {"n": 5}


def test_timestamp_matches_rq_format():
    from datetime import UTC, datetime

    from rq.utils import utcformat

    for when in (datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)):
        assert JobHashBuilder.timestamp(when) == utcformat(when)
