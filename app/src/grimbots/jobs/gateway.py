"""Jobs on the `gateway` queue: talking to the PSP (create charges, reconcile pending ones).

create_charge is enqueued by a "buy" (grimbots.jobs.updates) with RQ retries: a PSP that
is unreachable makes the job raise PspUnavailable and RQ runs it again later. The charge's
txid is derived from the payment's id, so every run asks for the same charge; a run that
follows an attempt (charge_attempts > 0, whose answer may have been lost) asks the PSP for
the charge's status before creating it again.

A job runs again after a failure or after its worker was killed. The first run records
in the job's meta the payment it opened, and every later run works on that payment only:
asking for "the pending payment of this lead and offer" again would open a second charge
once the first had been paid. The code of a payment that is no longer pending is not sent.

reconcile_pending runs periodically (`grimbots reconcile`, from a systemd timer that exists
only with a PSP): it asks the PSP about charges still pending after
PixSettings.reconcile_after_seconds and settles them through the same compare-and-set as the
webhook. Jobs abandoned by dead workers, failed jobs, outbox rows no job will send and lost
payment events are swept apart, with or without a PSP (grimbots.jobs.maintenance).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

from rq import Retry, get_current_job
from rq.exceptions import DuplicateJobError
from sqlalchemy import select

from grimbots import metrics, outbox, payments, texts
from grimbots.jobs import current_job_id, tracked
from grimbots.jobs.messages import send_one
from grimbots.jobs.webhook import settle
from grimbots.logs import event
from grimbots.models import Lead, Offer, Payment
from grimbots.pix import ATIVA, REMOVIDA_PELO_PSP, ChargeStatus, PspUnavailable
from grimbots.queues import GATEWAY, get_queue
from grimbots.services import Services, get_services

log = logging.getLogger(__name__)

# RQ re-runs a create_charge that found the PSP unreachable after these delays (seconds).
CHARGE_RETRY = Retry(max=6, interval=[5, 15, 30, 60, 120, 300])
# The job's meta key holding the id of the payment its first run opened.
PAYMENT_META = "payment_id"
RECONCILE_BATCH = 500
# A pending charge the PSP still calls active this long after its expiry is given up.
EXPIRY_GRACE = timedelta(minutes=10)

PAYMENTS_UNAVAILABLE = "Sorry, payments are not available right now. Please try again later."
CHARGE_REFUSED = "Sorry, we could not create your PIX payment. Please tap the offer again later."


def charge_job_id(bot_id: int, update_id: int) -> str:
    return f"charge-{bot_id}-{update_id}"


def enqueue_charge(
    services: Services, bot_id: int, lead_id: int, offer_id: int, update_id: int
) -> None:
    """Queue the charge for a "buy" update: once per update, with RQ retries."""
    try:
        get_queue(GATEWAY, services.redis.raw).enqueue(
            create_charge,
            bot_id,
            lead_id,
            offer_id,
            update_id,
            job_id=charge_job_id(bot_id, update_id),
            description=f"create charge bot={bot_id} offer={offer_id} update={update_id}",
            unique=True,  # a re-run of this update must not ask for a second charge
            retry=CHARGE_RETRY,  # PSP unreachable: RQ runs it again later
        )
    except DuplicateJobError:
        event(log, logging.INFO, "charge job already queued", bot_id=bot_id, update_id=update_id)


@tracked
def create_charge(bot_id: int, lead_id: int, offer_id: int, update_id: int) -> str:
    """Create (or reuse) the PIX charge for (lead, offer) and send its copy-and-paste code."""
    services = get_services()
    job = get_current_job()
    fields = {
        "bot_id": bot_id,
        "lead_id": lead_id,
        "offer_id": offer_id,
        "update_id": update_id,
        "job_id": job.id if job is not None else None,
    }
    # A re-run (RQ retry, a job abandoned by a killed worker) carries the payment its
    # first run opened: that one, whatever became of it, never "the pending one now",
    # which would be a second charge once the first was paid.
    bound = job.meta.get(PAYMENT_META) if job is not None else None
    with services.db.session() as session:
        lead = session.get(Lead, lead_id)
        offer = session.scalar(select(Offer).where(Offer.id == offer_id, Offer.bot_id == bot_id))
        if lead is None or offer is None:
            event(log, logging.WARNING, "lead or offer gone, no charge", **fields)
            return "gone"
        offer_name = offer.name
        if services.pix is None:
            metrics.PIX_CHARGES.labels("no_psp").inc()
            event(
                log,
                logging.ERROR,
                "buy refused: no PSP configured (set GRIMBOTS_PIX_*), no charge created",
                **fields,
            )
            outbox_id = _tell(
                session, f"pix:unavailable:{bot_id}:{update_id}", lead, PAYMENTS_UNAVAILABLE
            )
            payment = None
        elif bound is not None:
            payment = session.get(Payment, uuid.UUID(bound))
        else:
            payment, _ = payments.open_charge(
                session,
                bot_id=bot_id,
                lead_id=lead_id,
                offer_id=offer_id,
                amount_cents=offer.price_cents,
                provider=services.pix.provider,
            )
    if payment is None:
        send_one(services, outbox_id)
        return "no_psp"
    if job is not None and bound is None:
        # Saved before the PSP is asked, so before anyone can pay a charge this run opens.
        job.meta[PAYMENT_META] = payment.id.hex
        job.save_meta()

    fields["payment_id"] = payment.id
    if payment.pix_copy_paste is not None:
        if bound is None:
            metrics.PIX_CHARGES.labels("reused").inc()
            event(log, logging.INFO, "charge reused (pending for this lead and offer)", **fields)
    else:
        outcome = _charge_at_psp(services, payment.id, offer_name, fields)
        if outcome != "created":
            return outcome
        payment = payments.get(services.db, payment.id)
    with services.db.session() as session:
        text = texts.pix_code_text(offer_name, payment.amount_cents, payment.pix_copy_paste)
        outbox_id = outbox.add_text(
            session,
            key=payments.code_key(payment.id),
            lead=session.get(Lead, lead_id),
            kind=payments.CODE_KIND,
            text=text,
        )
    # send_one() sends no code for a payment settled meanwhile (grimbots.jobs.messages).
    sent = send_one(services, outbox_id)
    event(log, logging.INFO, "pix code", result=sent, **fields)
    return "charged"


def _charge_at_psp(services: Services, payment_id: uuid.UUID, offer_name: str, fields) -> str:
    """PUT /cob for the payment; 'created' once its code is stored, else what happened."""
    adapter = services.pix
    payment = payments.get(services.db, payment_id)
    if payment.status != payments.PENDING:
        return payment.status
    if payment.charge_attempts > 0:
        # A previous attempt's answer may have been lost: the charge may exist, and may
        # even be paid already. Ask before creating.
        status = adapter.charge_status(payment.txid)
        if status.outcome == "transient":
            metrics.PIX_CHARGES.labels("retry").inc()
            raise PspUnavailable(f"charge status: {status.description}")
        if status.ok and status.value.status != ATIVA:
            return _settle_status(services, payment_id, status.value)
        # ATIVA: PUT again returns the same charge with its code. 404: never created.
    payments.count_charge_attempt(services.db, payment_id)
    result = adapter.create_charge(payment.txid, payment.amount_cents, description=offer_name)
    if result.ok and result.value.status == ATIVA:
        charge = result.value
        payments.store_charge(services.db, payment_id, charge.pix_copy_paste, charge.expires_at)
        metrics.PIX_CHARGES.labels("created").inc()
        event(log, logging.INFO, "charge created", txid=payment.txid, **fields)
        return "created"
    if result.ok:  # found again, no longer active (paid or removed): settle from its status
        status = adapter.charge_status(payment.txid)
        if not status.ok:
            raise PspUnavailable(f"charge status: {status.description}")
        return _settle_status(services, payment_id, status.value)
    if result.outcome in ("transient", "unknown"):
        metrics.PIX_CHARGES.labels("retry").inc()
        event(
            log,
            logging.WARNING,
            "PSP did not create the charge (or the answer was lost); retrying later",
            outcome=result.outcome,
            error=result.description,
            **fields,
        )
        raise PspUnavailable(f"{result.outcome}: {result.description}")
    # rejected: the same request will never work.
    metrics.PIX_CHARGES.labels("failed").inc()
    _fail_and_tell(services, payment, f"PSP refused the charge: {result.description}")
    return "failed"


def _fail_and_tell(services: Services, payment: Payment, reason: str) -> None:
    if not payments.fail(services.db, payment.id, reason):
        return  # settled otherwise meanwhile
    event(log, logging.ERROR, "charge failed", payment_id=payment.id, reason=reason)
    with services.db.session() as session:
        lead = session.get(Lead, payment.lead_id)
        outbox_id = _tell(session, f"pix:failed:{payment.id.hex}", lead, CHARGE_REFUSED)
    send_one(services, outbox_id)


def _tell(session, key: str, lead: Lead, text: str) -> int:
    return outbox.add_text(session, key=key, lead=lead, kind="pix_notice", text=text)


def _settle_status(services: Services, payment_id: uuid.UUID, status: ChargeStatus) -> str:
    """What the PSP says about a charge, applied: paid (same path as the webhook) or gone."""
    if status.is_paid:
        for pix in status.payments:
            event_id = payments.record_status_payment(
                services.db, services.pix.provider, status.txid, pix
            )
            settle(services, event_id)
        return "paid"
    if status.is_removed:
        if payments.expire(services.db, payment_id):
            metrics.PAYMENTS_EXPIRED.labels(services.pix.provider).inc()
            event(log, logging.INFO, "charge expired", payment_id=payment_id, txid=status.txid)
        return "expired"
    return "pending"


# --- reconciliation ------------------------------------------------------------------


def reconcile_job_id(interval_seconds: int, at: float | None = None) -> str:
    """One reconciliation per period, however many hosts' timers ask for it."""
    slot = int((time.time() if at is None else at) // interval_seconds)
    return f"reconcile-{slot}"


def enqueue_reconcile(services: Services, interval_seconds: int) -> str | None:
    """Queue this period's reconciliation on `gateway`; None if it is already queued."""
    job_id = reconcile_job_id(interval_seconds)
    try:
        get_queue(GATEWAY, services.redis.raw).enqueue(
            reconcile_pending,
            job_id=job_id,
            description="reconcile pending PIX charges",
            unique=True,
            result_ttl=max(interval_seconds * 2, 600),
        )
    except DuplicateJobError:
        return None
    return job_id


@tracked
def reconcile_pending() -> dict[str, int]:
    return reconcile(get_services())


def reconcile(services: Services) -> dict[str, int]:
    """Ask the PSP about charges pending for a while and settle each. Returns counts."""
    counts: dict[str, int] = {}
    if services.pix is None:
        event(log, logging.INFO, "reconcile: no PSP configured, nothing to ask")
        return counts
    older_than = timedelta(seconds=services.settings.pix.reconcile_after_seconds)
    for payment_id in payments.due_for_reconciliation(services.db, older_than, RECONCILE_BATCH):
        outcome = reconcile_one(services, payment_id)
        counts[outcome] = counts.get(outcome, 0) + 1
    event(log, logging.INFO, "reconciled pending charges", job_id=current_job_id(), **counts)
    return counts


def reconcile_one(services: Services, payment_id: uuid.UUID) -> str:
    payment = payments.get(services.db, payment_id)
    if payment is None or payment.status != payments.PENDING:
        return "settled meanwhile"
    status = services.pix.charge_status(payment.txid)
    if status.not_found:
        if payment.pix_copy_paste is None:
            _fail_and_tell(services, payment, "the PSP never created the charge")
            return "failed"
        return _settle_status(services, payment_id, _removed(payment.txid, payment.amount_cents))
    if not status.ok:
        return "unreachable"
    outcome = _settle_status(services, payment_id, status.value)
    if outcome == "pending" and _long_past_expiry(services, payment_id):
        # The PSP still calls it active well after its expiry: give it up. A PIX that
        # still arrives for it is taken as a late payment (grimbots.payments).
        return _settle_status(services, payment_id, _removed(payment.txid, payment.amount_cents))
    return outcome


def _removed(txid: str, amount_cents: int) -> ChargeStatus:
    return ChargeStatus(txid, REMOVIDA_PELO_PSP, amount_cents)


def _long_past_expiry(services: Services, payment_id: uuid.UUID) -> bool:
    with services.db.session() as session:
        return (
            session.scalar(
                select(Payment.id).where(
                    Payment.id == payment_id,
                    Payment.expires_at < payments.now() - EXPIRY_GRACE,
                )
            )
            is not None
        )
