"""Sending one outbox row to Telegram, with the retry rules of each failure kind."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import update

from grimbots import metrics, outbox, payments
from grimbots.jobs import current_job_id, tracked
from grimbots.logs import event
from grimbots.models import Lead
from grimbots.queues import TASKS, get_queue
from grimbots.services import Services, get_services
from grimbots.telegram import ApiResult

log = logging.getLogger(__name__)

# A 429 asking us to wait up to this long is waited out inside the job; longer waits
# free the worker and come back through RQ's scheduler (workers run with_scheduler).
MAX_INLINE_WAIT_SECONDS = 5.0
# Connection refused / 5xx: a few quick retries inside the job, then later via the
# scheduler, and give up after MAX_ATTEMPTS calls in total.
INLINE_BACKOFF_SECONDS = (0.5, 1.0, 2.0)
DEFERRED_BACKOFF_SECONDS = 30
MAX_ATTEMPTS = 8
# Bot API calls one worker makes at once (send_claimed); TelegramClient keeps 20 sockets.
CONCURRENT_SENDS = 16


@tracked
def send_outbox_message(outbox_id: int) -> str:
    """RQ job: send one outbox row (also called inline by process_update)."""
    return send_one(get_services(), outbox_id)


def send_one(services: Services, outbox_id: int, inline_retries: int = 0) -> str:
    """Send one outbox row to Telegram, if this run claims it; its outcome ("sent",
    "skipped:<status>", "moot", "failed", "blocked", "unknown", "scheduled")."""
    while True:
        claimed = outbox.claim(services.db, outbox_id)
        if claimed is None:
            # Sent, failed, or `sending`: another run owns it or died mid-call (outcome
            # unknown). In every case this run must not call Telegram.
            status = outbox.status_of(services.db, outbox_id)
            _not_claimable(outbox_id, status)
            return f"skipped:{status}"

        fields = _fields(claimed)
        settled = payments.settled_before_its_code(services.db, claimed.kind, claimed.key)
        if settled is not None:
            outbox.mark_failed(services.db, outbox_id, f"{payments.CODE_NOT_SENT}{settled}")
            event(log, logging.INFO, "code not sent, payment settled", **fields)
            return "moot"
        result = _call(services, claimed)
        if result is None:
            return "failed"
        if result.outcome == "ok":
            message_id = _message_id(result)
            outbox.mark_sent(services.db, outbox_id, message_id)
            event(log, logging.INFO, "sent", telegram_message_id=message_id, **fields)
            return "sent"
        outcome, delay = settle(services, claimed, result, inline_retries)
        if delay is None:
            return outcome
        inline_retries += 1
        time.sleep(delay)


def send_claimed(services: Services, claimed: list[outbox.Claimed]) -> dict[int, str]:
    """Send rows the caller has claimed (and committed), all at once; {outbox id: outcome}.

    The calls run concurrently on the process's keep-alive connections, so one slow
    Telegram answer does not hold up the others, and the rows that went out are marked
    sent in one transaction. A failed call follows send_one()'s rules (settle()).
    """
    if len(claimed) == 1:
        results = [_call(services, claimed[0])]
    else:
        results = list(_sender_pool().map(lambda row: _call(services, row), claimed))
    outcomes: dict[int, str] = {}
    sent = []
    for row, result in zip(claimed, results, strict=True):
        if result is None:
            outcomes[row.id] = "failed"
        elif result.outcome == "ok":
            sent.append((row.id, _message_id(result)))
            outcomes[row.id] = "sent"
    outbox.mark_sent_many(services.db, sent)
    retry: dict[int, float] = {}
    for row, result in zip(claimed, results, strict=True):
        if row.id not in outcomes:
            outcomes[row.id], delay = settle(services, row, result, 0)
            if delay is not None:
                retry[row.id] = delay
    if retry:  # back to pending: one wait for all of them, then send_one()'s own loop
        time.sleep(max(retry.values()))
        for outbox_id in retry:
            outcomes[outbox_id] = send_one(services, outbox_id, inline_retries=1)
    return outcomes


_pool: tuple[int, ThreadPoolExecutor] | None = None


def _sender_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(CONCURRENT_SENDS, thread_name_prefix="send"))
    return _pool[1]


def _fields(claimed: outbox.Claimed) -> dict[str, object]:
    return {
        "outbox_id": claimed.id,
        "bot_id": claimed.bot_id,
        "chat_id": claimed.chat_id,
        "kind": claimed.kind,
        "attempt": claimed.attempts,
        "job_id": current_job_id(),
    }


def _not_claimable(outbox_id: int, status: str | None) -> None:
    event(
        log,
        logging.INFO,
        "outbox row not claimable, not sending",
        outbox_id=outbox_id,
        status=status,
        job_id=current_job_id(),
    )


def _message_id(result: ApiResult) -> int | None:
    return result.result.get("message_id") if isinstance(result.result, dict) else None


def _call(services: Services, claimed: outbox.Claimed) -> ApiResult | None:
    """The Bot API call for a claimed row; None (row marked failed) if its bot is gone."""
    bot = services.bots.get(claimed.bot_id)
    if bot is None:
        outbox.mark_failed(services.db, claimed.id, "bot no longer exists")
        return None
    result = services.telegram.call(bot.token, claimed.method, claimed.payload)
    metrics.OUTBOX_SENDS.labels(result.outcome).inc()
    return result


def settle(
    services: Services, claimed: outbox.Claimed, result: ApiResult, inline_retries: int
) -> tuple[str, float | None]:
    """Record a call that did not succeed: (outcome, None) when done with the row, or
    ("retry", delay) when it went back to pending to be claimed again after `delay`."""
    fields = _fields(claimed)
    outbox_id = claimed.id
    if result.outcome == "blocked":
        # The user blocked the bot: retrying cannot help. Remember it on the lead.
        outbox.mark_failed(services.db, outbox_id, f"403: {result.description}")
        if claimed.lead_id is not None:
            with services.db.session() as session:
                session.execute(update(Lead).where(Lead.id == claimed.lead_id).values(blocked=True))
        event(log, logging.INFO, "lead blocked the bot; not retrying", **fields)
        return "blocked", None

    if result.outcome == "rejected":
        outbox.mark_failed(services.db, outbox_id, f"{result.status_code}: {result.description}")
        event(
            log,
            logging.WARNING,
            "telegram rejected the call",
            status=result.status_code,
            error=result.description,
            **fields,
        )
        return "failed", None

    if result.outcome == "unknown":
        outbox.mark_outcome_unknown(services.db, outbox_id, result.description)
        event(
            log,
            logging.WARNING,
            "send outcome unknown, not re-sending",
            error=result.description,
            **fields,
        )
        return "unknown", None

    # retry_after or transient: known not delivered, so the row goes back to pending.
    if claimed.attempts >= MAX_ATTEMPTS:
        outbox.mark_failed(
            services.db,
            outbox_id,
            f"gave up after {claimed.attempts} attempts: {result.description}",
        )
        event(log, logging.WARNING, "giving up", error=result.description, **fields)
        return "failed", None
    outbox.release(services.db, outbox_id, result.description)
    if result.outcome == "retry_after":
        delay = result.retry_after or 1.0
    elif inline_retries < len(INLINE_BACKOFF_SECONDS):
        delay = INLINE_BACKOFF_SECONDS[inline_retries]
    else:
        delay = DEFERRED_BACKOFF_SECONDS
    if delay <= MAX_INLINE_WAIT_SECONDS:
        event(
            log,
            logging.INFO,
            "retrying after a delay",
            delay=delay,
            reason=result.outcome,
            **fields,
        )
        return "retry", delay
    _retry_later(services, outbox_id, claimed.attempts, delay)
    event(log, logging.INFO, "retry scheduled", delay=delay, reason=result.outcome, **fields)
    return "scheduled", None


def retry_job_id(outbox_id: int, attempt: int) -> str:
    # One scheduled retry per attempt number: re-running a job cannot double it.
    return f"outbox-{outbox_id}-retry-{attempt}"


def _retry_later(services: Services, outbox_id: int, attempt: int, delay: float) -> None:
    queue = get_queue(TASKS, services.redis.raw)
    queue.enqueue_in(
        timedelta(seconds=delay),
        send_outbox_message,
        outbox_id,
        job_id=retry_job_id(outbox_id, attempt),
        description=f"send outbox {outbox_id} (retry {attempt})",
    )
