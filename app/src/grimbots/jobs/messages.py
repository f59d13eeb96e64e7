"""Sending one outbox row to Telegram, with the retry rules of each failure kind."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import select, update

from grimbots import metrics, outbox, payments
from grimbots.jobs import current_job_id, tracked
from grimbots.logs import event
from grimbots.models import Bot, Lead
from grimbots.queues import TASKS, get_queue
from grimbots.services import Services, get_services

log = logging.getLogger(__name__)

# A 429 asking us to wait up to this long is waited out inside the job; longer waits
# free the worker and come back through RQ's scheduler (workers run with_scheduler).
MAX_INLINE_WAIT_SECONDS = 5.0
# Connection refused / 5xx: a few quick retries inside the job, then later via the
# scheduler, and give up after MAX_ATTEMPTS calls in total.
INLINE_BACKOFF_SECONDS = (0.5, 1.0, 2.0)
DEFERRED_BACKOFF_SECONDS = 30
MAX_ATTEMPTS = 8


@tracked
def send_outbox_message(outbox_id: int) -> str:
    """RQ job: deliver one outbox row (also called inline by process_update)."""
    return deliver(get_services(), outbox_id)


def deliver(services: Services, outbox_id: int) -> str:
    inline_retries = 0
    while True:
        claimed = outbox.claim(services.db, outbox_id)
        if claimed is None:
            # Sent, failed, or `sending`: another run owns it or died mid-call (outcome
            # unknown). In every case this run must not call Telegram.
            status = outbox.status_of(services.db, outbox_id)
            event(
                log,
                logging.INFO,
                "outbox row not claimable, not sending",
                outbox_id=outbox_id,
                status=status,
                job_id=current_job_id(),
            )
            return f"skipped:{status}"

        fields = {
            "outbox_id": outbox_id,
            "bot_id": claimed.bot_id,
            "chat_id": claimed.chat_id,
            "kind": claimed.kind,
            "attempt": claimed.attempts,
            "job_id": current_job_id(),
        }
        if claimed.kind == payments.CODE_KIND:
            # A code held back (its job died, or was slow) until its payment was paid,
            # expired or failed: sending it now would only confuse the buyer.
            payment_status = payments.status_behind_code(services.db, claimed.key)
            if payment_status != payments.PENDING:
                outbox.mark_failed(
                    services.db, outbox_id, f"{payments.CODE_NOT_SENT}{payment_status}"
                )
                event(log, logging.INFO, "code not sent, payment settled", **fields)
                return "moot"
        with services.db.session() as session:
            token = session.scalar(select(Bot.token).where(Bot.id == claimed.bot_id))
        if token is None:
            outbox.mark_failed(services.db, outbox_id, "bot no longer exists")
            return "failed"

        result = services.telegram.call(token, claimed.method, claimed.payload)
        metrics.OUTBOX_SENDS.labels(result.outcome).inc()

        if result.outcome == "ok":
            message_id = (
                result.result.get("message_id") if isinstance(result.result, dict) else None
            )
            outbox.mark_sent(services.db, outbox_id, message_id)
            event(log, logging.INFO, "sent", telegram_message_id=message_id, **fields)
            return "sent"

        if result.outcome == "blocked":
            # The user blocked the bot: retrying cannot help. Remember it on the lead.
            outbox.mark_failed(services.db, outbox_id, f"403: {result.description}")
            if claimed.lead_id is not None:
                with services.db.session() as session:
                    session.execute(
                        update(Lead).where(Lead.id == claimed.lead_id).values(blocked=True)
                    )
            event(log, logging.INFO, "lead blocked the bot; not retrying", **fields)
            return "blocked"

        if result.outcome == "rejected":
            outbox.mark_failed(
                services.db, outbox_id, f"{result.status_code}: {result.description}"
            )
            event(
                log,
                logging.WARNING,
                "telegram rejected the call",
                status=result.status_code,
                error=result.description,
                **fields,
            )
            return "failed"

        if result.outcome == "unknown":
            outbox.mark_failed(services.db, outbox_id, f"{result.description}; not re-sent")
            event(
                log,
                logging.WARNING,
                "send outcome unknown, not re-sending",
                error=result.description,
                **fields,
            )
            return "unknown"

        # retry_after or transient: known not delivered, so the row goes back to pending.
        if claimed.attempts >= MAX_ATTEMPTS:
            outbox.mark_failed(
                services.db,
                outbox_id,
                f"gave up after {claimed.attempts} attempts: {result.description}",
            )
            event(log, logging.WARNING, "giving up", error=result.description, **fields)
            return "failed"
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
            inline_retries += 1
            time.sleep(delay)
            continue
        _retry_later(services, outbox_id, claimed.attempts, delay)
        event(log, logging.INFO, "retry scheduled", delay=delay, reason=result.outcome, **fields)
        return "scheduled"


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
