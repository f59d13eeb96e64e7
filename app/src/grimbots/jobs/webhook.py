"""Jobs on the `webhook` queue: apply one PSP event (a reported PIX) to its payment.

A callback is a hint: before its event can move money the job asks the PSP for the
charge (API Pix GET /cob/{txid}) and records what the PSP itself lists as paid
(grimbots.payments.record_status_payment). A PSP that does not answer makes the job raise
PspUnavailable, and RQ runs it again later (EVENT_RETRY, then the maintenance sweep):
nothing is paid meanwhile.
"""

from __future__ import annotations

import logging
import uuid

from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.job import JobStatus

from grimbots import deliveries, metrics, payments
from grimbots.jobs import current_job_id, tracked
from grimbots.jobs.messages import send_one
from grimbots.logs import event
from grimbots.pix import PspUnavailable
from grimbots.services import Services, get_services

log = logging.getLogger(__name__)


# A job that failed (the database or the PSP was away) is run again after these delays.
EVENT_RETRY = Retry(max=5, interval=[1, 5, 30, 60, 300])


def event_job_id(provider: str, event_key: str) -> str:
    """The RQ job id of one PSP event: repeated callbacks queue it once."""
    return f"pix-{provider}-{event_key}"


def enqueue_event(
    queue: Queue, event_id: int, provider: str, event_key: str, requeue_failed: bool = False
) -> bool:
    """Queue the event's job unless it is already queued; True when this call queued it."""
    job_id = event_job_id(provider, event_key)
    try:
        queue.enqueue(
            process_payment_event,
            event_id,
            job_id=job_id,
            unique=True,
            retry=EVENT_RETRY,
            description=f"pix event {provider}:{event_key}",
        )
        return True
    except DuplicateJobError:
        if requeue_failed:
            job = queue.fetch_job(job_id)
            if job is not None and job.get_status() == JobStatus.FAILED:
                queue.failed_job_registry.requeue(job_id)
                return True
        return False


@tracked
def process_payment_event(event_id: int) -> str:
    return settle(get_services(), event_id)


def confirm_with_psp(services: Services, event_id: int) -> None:
    """Ask the PSP about the charge an unconfirmed event names, and record every PIX the
    PSP lists for it as confirmed (the event's own, if the PSP knows it; and any the
    callback did not name, which are settled here too)."""
    txid = payments.txid_to_confirm(services.db, event_id)
    if txid is None or services.pix is None:
        return  # confirmed already (or processed), or not one of our charges
    status = services.pix.charge_status(txid)
    if status.outcome == "transient":
        raise PspUnavailable(f"charge status of {txid}: {status.description}")
    if not status.ok:  # 404 or refused: the PSP vouches for nothing
        return
    for pix in status.value.payments if status.value.is_paid else ():
        listed = payments.record_status_payment(services.db, services.pix.provider, txid, pix)
        if listed != event_id:
            settle(services, listed)


def settle(services: Services, event_id: int) -> str:
    """Confirm the event with the PSP, apply it (compare-and-set), count what the winner
    won, send the delivery.

    Shared by the webhook job and the reconciliation job, so both confirm a payment the
    same way. Safe to run any number of times, concurrently: the database decides.
    """
    confirm_with_psp(services, event_id)
    result = payments.apply_event(services.db, event_id)
    fields = {
        "event_id": event_id,
        "payment_id": result.payment_id,
        "provider": result.provider,
        "outcome": result.outcome,
        "job_id": current_job_id(),
    }
    if result.outcome != "already_processed":
        metrics.PAYMENT_EVENTS.labels(result.provider, result.outcome).inc()
    if result.won:
        late = result.outcome == "late"
        metrics.PAYMENTS_CONFIRMED.labels(result.provider, str(late).lower()).inc()
        metrics.REVENUE_CENTS.labels(result.provider).inc(result.amount_cents)
        metrics.DELIVERIES.labels("first").inc()
        if late:
            event(
                log,
                logging.WARNING,
                "late payment: the charge had expired; paid_late, delivered, review it",
                amount_cents=result.amount_cents,
                **fields,
            )
        else:
            event(
                log, logging.INFO, "payment confirmed", amount_cents=result.amount_cents, **fields
            )
    elif result.outcome in ("amount_mismatch", "not_confirmed", "unknown_txid", "ignored"):
        event(
            log,
            logging.ERROR,
            "payment event not applied; operator must review",
            amount_cents=result.amount_cents,
            **fields,
        )
    if result.payment_id is not None:
        send_pending_delivery(services, result.payment_id)
    return result.outcome


def send_pending_delivery(services: Services, payment_id: uuid.UUID) -> str | None:
    """Send the delivery if it still waits: right after the win, or after a crash.

    Any number of callers may try: only the one that claims the outbox row (pending ->
    sending) calls Telegram, and a row left `sending` by a killed worker is never re-sent.
    """
    outbox_id = deliveries.pending_delivery_outbox_id(services.db, payment_id)
    if outbox_id is None:
        return None
    return send_one(services, outbox_id)
