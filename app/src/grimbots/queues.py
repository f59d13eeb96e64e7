"""RQ queue names, job ids and job defaults shared by the web tier, jobs and workers."""

from __future__ import annotations

from redis import Redis
from rq import Queue, Retry

TASKS = "tasks"  # Telegram updates and outgoing messages
GATEWAY = "gateway"  # talking to the PSP (issue 4)
WEBHOOK = "webhook"  # PSP events (issue 4)
ALL_QUEUES = (TASKS, GATEWAY, WEBHOOK)
# The job of one Telegram update: the webhook queues it (grimbots.telegram_ingest), the
# batch worker knows it by this name (grimbots.worker).
PROCESS_UPDATE = "grimbots.jobs.updates.process_update"

JOB_TIMEOUT_SECONDS = 60
# Results are not read by anyone; keep them a minute for debugging. Failures stay a week.
# A finished update job with its result costs Redis ~6.5 KB (docs/benchmarks.md, "Reply
# path"): a minute at 1,000 updates/s holds 0.4 GB. At five minutes the lab's 512 MB Redis
# filled while a backlog drained (docs/benchmarks.md, the phase-3 lab), and then the
# workers' own writes were refused too (OOM), which slowed the drain that frees memory.
RESULT_TTL_SECONDS = 60
FAILURE_TTL_SECONDS = 7 * 86400
# Telegram updates: re-run on an exception or when the worker died mid-job (re-running an
# update is safe: every write is idempotent and a reply is sent at most once). The first
# retry is immediate: a job abandoned by a killed worker has already waited for its expiry.
UPDATE_RETRY = Retry(max=3, interval=[0, 10, 60])


def update_job_id(bot_id: int, update_id: int) -> str:
    """The RQ job id of one Telegram update: the same update can only be queued once."""
    return f"tg-{bot_id}-{update_id}"


def get_queue(name: str, connection: Redis) -> Queue:
    # RQ stores pickled bytes: it needs the client without decode_responses.
    return Queue(name, connection=connection, default_timeout=JOB_TIMEOUT_SECONDS)
