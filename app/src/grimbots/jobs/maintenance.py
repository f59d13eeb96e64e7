"""The always-on maintenance sweep: the work a dead worker or a lost job leaves behind.

`grimbots maintenance`, from grimbots-maintenance.timer every minute on every app host,
sweeps at most once per period across hosts (a Redis key per period decides). It needs no
PSP and no worker: it works on Redis and the database directly, so it also runs while
every worker is down, which is when it matters. Every part is safe to run twice:
- abandoned jobs: a worker killed mid-job leaves its job in the started registry (or in
  the queue's intermediate list) until RQ's own maintenance, every 10 minutes, notices;
- failed jobs: a job that used up its RQ retries (say the database was away for longer)
  goes back to its queue after 1 minute, then 2, 4, ... up to 30 minutes between tries, for
  as long as it fails. Every job of the app is idempotent (see DESIGN: exactly-once keys),
  so a re-run can only finish the work, and an accepted update is never dropped;
- orphaned outbox rows: rows left pending with no job to send them;
- lost payment events: events recorded but never processed (their job was lost).
What it did is counted in Redis (grimbots:maintenance), shown by /metrics and /health.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime, timedelta

from redis import Redis
from rq import SimpleWorker
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from grimbots import outbox, payments
from grimbots.jobs.messages import retry_job_id, send_outbox_message
from grimbots.jobs.webhook import enqueue_event
from grimbots.logs import event
from grimbots.queues import ALL_QUEUES, TASKS, WEBHOOK, get_queue
from grimbots.services import Services

log = logging.getLogger(__name__)

# The job's meta key counting how often a sweep put it back after it failed for good.
REQUEUES_META = "maintenance_requeues"
FIRST_REQUEUE_DELAY = 60.0
MAX_REQUEUE_DELAY = 1800.0
BATCH = 500
# A row still pending this long after its last change has no job left to send it.
ORPHAN_AGE = timedelta(minutes=5)
# An event nobody processed after this long lost its job (e.g. Redis lost it).
STALE_EVENT_AGE = timedelta(minutes=1)
# Totals and the last run, for /metrics and /health: one hash shared by every host.
STATS_KEY = "grimbots:maintenance"


def requeue_delay(requeues: int) -> float:
    """Seconds between a job's last failure and its next try: 60, 120, 240, ... 1800."""
    return min(FIRST_REQUEUE_DELAY * 2**requeues, MAX_REQUEUE_DELAY)


def sweep_abandoned(connection: Redis, now: float | None = None) -> int:
    """Re-queue (or fail, without retries left) jobs whose worker died mid-job.

    A SIGKILLed worker leaves its job in the started registry until the job's heartbeat
    expires (timeout + 60 s), or, killed between dequeue and start, in the queue's
    intermediate list. An abandoned job comes back within about a minute of expiring (an
    intermediate one on the second sweep that sees it). `now` (a Unix time) is for tests.
    Returns how many abandoned jobs were found.
    """
    found = 0
    for name in ALL_QUEUES:
        queue = get_queue(name, connection)
        registry = StartedJobRegistry(queue=queue)
        found += len(registry.get_expired_job_ids(now))
        registry.cleanup(now)
        stuck = queue.intermediate_queue
        before = set(stuck.get_job_ids())
        # RQ's own failure handling of stuck jobs wants a worker object; it does no work.
        stuck.cleanup(SimpleWorker([queue], connection=connection), queue)
        found += len(before - set(stuck.get_job_ids()))
    return found


def requeue_failed(connection: Redis, now: float | None = None) -> dict[str, int]:
    """Put jobs that failed for good back on their queue, each after its delay.

    Returns how many were re-queued per queue (queues with none are left out).
    """
    now = time.time() if now is None else now
    requeued: dict[str, int] = {}
    for name in ALL_QUEUES:
        registry = FailedJobRegistry(queue=get_queue(name, connection))
        for job in Job.fetch_many(registry.get_job_ids(0, BATCH - 1), connection=connection):
            if job is None:  # expired meanwhile
                continue
            requeues = int(job.meta.get(REQUEUES_META, 0))
            failed_at = job.ended_at.timestamp() if job.ended_at else 0.0
            if now < failed_at + requeue_delay(requeues):
                continue
            job.meta[REQUEUES_META] = requeues + 1
            job.save_meta()
            try:
                registry.requeue(job)
            except InvalidJobOperation:  # another sweep or an operator took it
                continue
            requeued[name] = requeued.get(name, 0) + 1
            event(
                log,
                logging.WARNING,
                "failed job re-queued",
                job_id=job.id,
                queue=name,
                requeues=requeues + 1,
                next_delay=requeue_delay(requeues + 1),
            )
    return requeued


def requeue_orphans(services: Services, older_than: timedelta = ORPHAN_AGE) -> int:
    """Queue a send for each outbox row left pending with no job to send it.

    A job killed between writing its rows and sending them, with no retries left, leaves
    them pending for good. A row waiting for its scheduled retry is not an orphan.
    """
    queue = get_queue(TASKS, services.redis.raw)
    requeued = 0
    for outbox_id, attempts in outbox.orphans(services.db, older_than, BATCH):
        if _alive(services.redis.raw, retry_job_id(outbox_id, attempts)):
            continue
        try:
            queue.enqueue(
                send_outbox_message,
                outbox_id,
                job_id=f"outbox-{outbox_id}-orphan-{attempts}",
                description=f"send orphaned outbox {outbox_id}",
                unique=True,  # still queued from the previous sweep
            )
        except DuplicateJobError:
            continue
        requeued += 1
    if requeued:
        event(log, logging.WARNING, "orphaned outbox rows queued for sending", count=requeued)
    return requeued


def _alive(connection: Redis, job_id: str) -> bool:
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return False
    return job.get_status() in (
        JobStatus.QUEUED,
        JobStatus.SCHEDULED,
        JobStatus.DEFERRED,
        JobStatus.STARTED,
    )


def requeue_lost_events(services: Services) -> int:
    """Queue the job of each payment event that was recorded but whose job is gone."""
    queue = get_queue(WEBHOOK, services.redis.raw)
    return sum(
        enqueue_event(queue, event_id, provider, event_key)
        for event_id, provider, event_key in payments.unprocessed_events(
            services.db, STALE_EVENT_AGE, BATCH
        )
    )


def sweep(services: Services, now: float | None = None) -> dict[str, int]:
    """One maintenance pass; returns what it found and did."""
    raw = services.redis.raw
    requeued = requeue_failed(raw, now)
    counts = {
        "abandoned jobs": sweep_abandoned(raw, now),
        "failed jobs requeued": sum(requeued.values()),
        "orphaned messages": requeue_orphans(services),
        "events requeued": requeue_lost_events(services),
    }
    with raw.pipeline(transaction=False) as pipe:
        for queue, count in requeued.items():
            pipe.hincrby(STATS_KEY, f"requeued:{queue}", count)
        pipe.hincrby(STATS_KEY, "abandoned", counts["abandoned jobs"])
        pipe.hincrby(STATS_KEY, "orphans", counts["orphaned messages"])
        pipe.hset(STATS_KEY, "last_run", f"{time.time():.3f}")
        pipe.execute()
    return counts


def run_once_per_period(services: Services, interval: int) -> dict[str, int] | None:
    """sweep() unless another host already swept in this period (then None)."""
    slot = int(time.time() // interval)
    if not services.redis.text.set(
        f"{STATS_KEY}:slot:{slot}", socket.gethostname(), nx=True, ex=interval * 2
    ):
        return None
    counts = sweep(services)
    level = logging.WARNING if any(counts.values()) else logging.INFO
    event(log, level, "maintenance sweep", **counts)
    return counts


def stats(connection: Redis) -> dict[str, float]:
    """The totals and the last run (Unix time) the sweeps recorded."""
    return {key.decode(): float(value) for key, value in connection.hgetall(STATS_KEY).items()}


def last_run(connection: Redis) -> float | None:
    """When a sweep last ran on any host (Unix time), or None if never."""
    value = connection.hget(STATS_KEY, "last_run")
    return float(value) if value else None


def failed_jobs(connection: Redis, sample: int = 10) -> dict[str, dict[str, float | int | None]]:
    """Per queue: jobs in RQ's failed registry and the age of the oldest failure seen.

    Two round trips whatever the backlog: the registry sizes, then the failure time of the
    first `sample` entries of each (the registry is ordered by failure time plus TTL).
    """
    keys = {name: FailedJobRegistry(queue=get_queue(name, connection)).key for name in ALL_QUEUES}
    with connection.pipeline(transaction=False) as pipe:
        for key in keys.values():
            pipe.zcard(key)
            pipe.zrange(key, 0, sample - 1)
        replies = pipe.execute()
    sizes = dict(zip(keys, replies[0::2], strict=True))
    heads = dict(zip(keys, replies[1::2], strict=True))
    with connection.pipeline(transaction=False) as pipe:
        for name in keys:
            for job_id in heads[name]:
                pipe.hget(b"rq:job:" + job_id, "ended_at")
        ended = iter(pipe.execute())
    now = datetime.now(UTC)
    report: dict[str, dict[str, float | int | None]] = {}
    for name in keys:
        times = [_parse_utc(next(ended)) for _ in heads[name]]
        known = [t for t in times if t is not None]
        oldest = round((now - min(known)).total_seconds(), 1) if known else None
        report[name] = {"count": sizes[name], "oldest_seconds": oldest}
    return report


def _parse_utc(value: bytes | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
