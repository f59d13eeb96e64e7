"""Payments on the database: the PIX charge state machine and the PSP's events.

A payment moves only forward, and every move is a compare-and-set
(`UPDATE payments SET status=<to> WHERE id=? AND status=<from>`), so of any number of
concurrent callers (50 copies of a callback, the reconciliation job) exactly one wins:
  pending -> paid       the PSP reports a PIX of the charged amount
  pending -> expired    the PSP removed the charge, or it is long past its expiry
  pending -> failed     the PSP refused the charge, or a PIX of another amount paid it
  expired -> paid_late  a PIX of the charged amount for a charge we had given up
Only the winner of a move to paid/paid_late creates the delivery (grimbots.deliveries: its
outbox row and its deliveries row), in the same transaction as the move: a crash leaves
both or neither.
The caller counts revenue only when it won (grimbots.jobs.webhook).

Late payments (decision): the PSP took the buyer's money for our charge, so it is revenue
and the buyer gets access, like any payment; the status `paid_late` and the event flag
`late` keep it apart, the job logs it at WARNING and counts it with late="true", so an
operator can review it (an expiry that raced the payment is the usual cause). It is counted
once, like any payment: only the compare-and-set winner counts it.

Confirmed by the PSP (decision): a callback is a hint, never proof. Its notices are stored
unconfirmed; only an event the PSP's own charge status lists (GET /cob/{txid}: CONCLUIDA,
this endToEndId among its `pix`) is `psp_confirmed`, and apply_event moves money on those
alone (grimbots.jobs.webhook asks the PSP first). A callback the PSP does not confirm is
kept with outcome `not_confirmed` and pays nothing; if the PSP lists the same PIX later
(the reconciliation asks again), the event is re-opened confirmed and applied then. A
callback that names a real PIX with another amount is flagged callback_mismatch, and the
PSP's amount is what counts.

Amount mismatch (decision): never paid. When the PSP confirms a PIX of another amount than
the charge, the event is flagged and the pending payment moves to failed with the reason
(an API Pix charge cannot be paid twice, so it would never be paid right): the buyer can
tap "buy" again and an operator refunds the odd amount.
A PIX whose txid we do not know is kept, flagged unknown_txid, and pays nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import func, literal_column, select, update
from sqlalchemy.orm import Session

from grimbots.db import Database, insert_for
from grimbots.deliveries import create_delivery
from grimbots.models import Payment, PaymentEvent
from grimbots.pix import PaymentNotice, PixPayment, txid_for
from grimbots.statuses import PaymentStatus

PENDING, PAID, EXPIRED, FAILED, PAID_LATE = PaymentStatus.ALL
# The outbox kind and key prefix of the message carrying a charge's copy-and-paste code.
CODE_KIND, CODE_KEY_PREFIX = "pix_code", "pix:code:"
# The error of a code message held back because its payment was settled first.
CODE_NOT_SENT = "not sent: its payment is "


def utc(moment: datetime) -> datetime:
    """Aware UTC: SQLite keeps the wall-clock digits and drops the offset."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


# --- charges -------------------------------------------------------------------------


def open_charge(
    session: Session, *, bot_id: int, lead_id: int, offer_id: int, amount_cents: int, provider: str
) -> tuple[Payment, bool]:
    """The pending payment of (lead, offer): a new one, or the open one (created=False).

    The partial unique index (one pending row per lead and offer) decides between
    concurrent callers: INSERT ... ON CONFLICT DO NOTHING, then read whichever row won.
    A pending charge already past its expiry is expired first, so a new "buy" works.
    """
    session.execute(
        update(Payment)
        .where(
            Payment.lead_id == lead_id,
            Payment.offer_id == offer_id,
            Payment.status == PENDING,
            Payment.expires_at < now(),
        )
        .values(status=EXPIRED, expired_at=func.now(), updated_at=func.now())
    )
    payment_id = uuid.uuid4()
    insert = insert_for(session)
    created = session.execute(
        insert(Payment)
        .values(
            id=payment_id,
            bot_id=bot_id,
            lead_id=lead_id,
            offer_id=offer_id,
            amount_cents=amount_cents,
            provider=provider,
            txid=txid_for(payment_id),
        )
        # The index's predicate as a literal, not a parameter: a generic plan (psycopg
        # prepares a statement run 5 times) knows no parameter's value, so it matched no
        # index and the charge failed ("no unique or exclusion constraint matching").
        .on_conflict_do_nothing(
            index_elements=["lead_id", "offer_id"],
            index_where=Payment.status == literal_column(f"'{PENDING}'"),
        )
    ).rowcount
    payment = session.scalar(
        select(Payment).where(
            Payment.lead_id == lead_id, Payment.offer_id == offer_id, Payment.status == PENDING
        )
    )
    if payment is None:  # the open one was paid or expired between our two statements
        return open_charge(
            session,
            bot_id=bot_id,
            lead_id=lead_id,
            offer_id=offer_id,
            amount_cents=amount_cents,
            provider=provider,
        )
    return payment, created == 1


def get(db: Database, payment_id: uuid.UUID) -> Payment | None:
    with db.session() as session:
        return session.get(Payment, payment_id)


def count_charge_attempt(db: Database, payment_id: uuid.UUID) -> None:
    """Committed before PUT /cob: a later run knows to ask the PSP before creating again."""
    with db.session() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(charge_attempts=Payment.charge_attempts + 1, updated_at=func.now())
        )


def store_charge(
    db: Database, payment_id: uuid.UUID, pix_copy_paste: str, expires_at: datetime
) -> None:
    with db.session() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id, Payment.pix_copy_paste.is_(None))
            .values(
                pix_copy_paste=pix_copy_paste, expires_at=utc(expires_at), updated_at=func.now()
            )
        )


def _move(session: Session, payment_id: uuid.UUID, source: str, target: str, **values) -> bool:
    """The compare-and-set: True for the one caller that moved the payment."""
    result = session.execute(
        update(Payment)
        .where(Payment.id == payment_id, Payment.status == source)
        .values(status=target, updated_at=func.now(), **values)
    )
    return result.rowcount == 1


def expire(db: Database, payment_id: uuid.UUID) -> bool:
    with db.session() as session:
        return _move(session, payment_id, PENDING, EXPIRED, expired_at=func.now())


def fail(db: Database, payment_id: uuid.UUID, reason: str) -> bool:
    with db.session() as session:
        return _fail(session, payment_id, reason)


def _fail(session: Session, payment_id: uuid.UUID, reason: str) -> bool:
    return _move(
        session, payment_id, PENDING, FAILED, failed_at=func.now(), failure_reason=reason[:1000]
    )


def due_for_reconciliation(db: Database, older_than: timedelta, limit: int) -> list[uuid.UUID]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Payment.id)
                .where(Payment.status == PENDING, Payment.created_at < now() - older_than)
                .order_by(Payment.created_at)
                .limit(limit)
            )
        )


# --- PSP events ----------------------------------------------------------------------


def record_notice(
    session: Session, provider: str, notice: PaymentNotice | PixPayment, raw: bytes, source: str
) -> tuple[int, bool]:
    """Store one reported PIX once per (provider, endToEndId); (event id, processed yet)."""
    txid = getattr(notice, "txid", None)
    insert = insert_for(session)
    session.execute(
        insert(PaymentEvent)
        .values(
            provider=provider,
            event_key=notice.end_to_end_id,
            source=source,
            txid=txid,
            amount_cents=notice.amount_cents,
            paid_at=utc(notice.paid_at),
            raw_body=raw.decode("utf-8", "replace"),
        )
        .on_conflict_do_nothing(index_elements=["provider", "event_key"])
    )
    row = session.execute(
        select(PaymentEvent.id, PaymentEvent.processed_at).where(
            PaymentEvent.provider == provider, PaymentEvent.event_key == notice.end_to_end_id
        )
    ).one()
    return row.id, row.processed_at is not None


def record_status_payment(db: Database, provider: str, txid: str, pix: PixPayment) -> int:
    """A PIX the PSP's charge status lists: recorded confirmed, or its callback's row
    (same endToEndId) confirmed and, if it was refused as not confirmed, re-opened.

    The PSP's amount and time replace what a callback claimed; a claim that differed is
    flagged callback_mismatch.
    """
    raw = orjson.dumps(
        {
            "endToEndId": pix.end_to_end_id,
            "txid": txid,
            "amount_cents": pix.amount_cents,
            "paid_at": pix.paid_at.isoformat(),
            "source": "charge status",
        }
    )
    with db.session() as session:
        insert = insert_for(session)
        statement = insert(PaymentEvent).values(
            provider=provider,
            event_key=pix.end_to_end_id,
            source="reconcile",
            txid=txid,
            amount_cents=pix.amount_cents,
            paid_at=utc(pix.paid_at),
            raw_body=raw.decode(),
            psp_confirmed=True,
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["provider", "event_key"],
                set_={
                    "psp_confirmed": True,
                    "callback_mismatch": PaymentEvent.amount_cents
                    != statement.excluded.amount_cents,
                    "amount_cents": statement.excluded.amount_cents,
                    "paid_at": statement.excluded.paid_at,
                    "processed_at": None,
                    "outcome": None,
                },
                # Only rows not confirmed yet: unprocessed callbacks, or ones refused as
                # not confirmed. A processed confirmed event is never touched again.
                where=PaymentEvent.psp_confirmed.is_(False),
            )
        )
        return session.scalar(
            select(PaymentEvent.id).where(
                PaymentEvent.provider == provider, PaymentEvent.event_key == pix.end_to_end_id
            )
        )


def txid_to_confirm(db: Database, event_id: int) -> str | None:
    """The txid to ask the PSP about, for an event not confirmed nor processed yet that
    names one of our charges; None when there is nothing to ask."""
    with db.session() as session:
        return session.scalar(
            select(PaymentEvent.txid)
            .join(Payment, Payment.txid == PaymentEvent.txid)
            .where(
                PaymentEvent.id == event_id,
                PaymentEvent.psp_confirmed.is_(False),
                PaymentEvent.processed_at.is_(None),
            )
        )


def unprocessed_events(
    db: Database, older_than: timedelta, limit: int
) -> list[tuple[int, str, str]]:
    """(id, provider, event_key) of events nobody processed: their job was lost."""
    with db.session() as session:
        return [
            tuple(row)
            for row in session.execute(
                select(PaymentEvent.id, PaymentEvent.provider, PaymentEvent.event_key)
                .where(
                    PaymentEvent.processed_at.is_(None),
                    PaymentEvent.received_at < now() - older_than,
                )
                .limit(limit)
            )
        ]


@dataclass(frozen=True)
class Settled:
    """What applying one event did. `won` is true for exactly one caller per payment."""

    # confirmed, late, duplicate, amount_mismatch, not_confirmed, unknown_txid, ignored,
    # already_processed
    outcome: str
    provider: str
    payment_id: uuid.UUID | None
    amount_cents: int
    won: bool = False


def apply_event(db: Database, event_id: int) -> Settled:
    """Apply a recorded PIX to its payment (the compare-and-set), once per event.

    Only an event the PSP confirmed moves money; any other is `not_confirmed`.
    """
    with db.session() as session:
        event = session.get(PaymentEvent, event_id)
        if event is None:
            raise LookupError(f"no payment event {event_id}")
        if event.processed_at is not None:
            return Settled(
                "already_processed", event.provider, event.payment_id, event.amount_cents
            )
        payment = (
            session.scalar(select(Payment).where(Payment.txid == event.txid))
            if event.txid
            else None
        )
        won, flags = False, {}
        paid_at = event.paid_at or func.now()
        if payment is None:
            outcome, flags = "unknown_txid", {"unknown_txid": True}
        elif not event.psp_confirmed:
            outcome = "not_confirmed"
        elif event.amount_cents != payment.amount_cents:
            outcome, flags = "amount_mismatch", {"amount_mismatch": True}
            _fail(
                session,
                payment.id,
                f"amount mismatch: paid {event.amount_cents} cents, charged "
                f"{payment.amount_cents} (event {event.event_key})",
            )
        elif _move(session, payment.id, PENDING, PAID, paid_at=paid_at):
            outcome, won = "confirmed", True
        elif _move(session, payment.id, EXPIRED, PAID_LATE, paid_at=paid_at):
            outcome, won, flags = "late", True, {"late": True}
        else:
            status = session.scalar(select(Payment.status).where(Payment.id == payment.id))
            outcome = "duplicate" if status in (PAID, PAID_LATE) else "ignored"
        if won:
            create_delivery(session, payment)
        # Also a compare-and-set: of two processors of one event, one writes the verdict.
        session.execute(
            update(PaymentEvent)
            .where(PaymentEvent.id == event_id, PaymentEvent.processed_at.is_(None))
            .values(
                processed_at=func.now(),
                outcome=outcome,
                payment_id=payment.id if payment is not None else None,
                **flags,
            )
        )
        return Settled(
            outcome,
            event.provider,
            payment.id if payment is not None else None,
            event.amount_cents,
            won,
        )


def code_key(payment_id: uuid.UUID) -> str:
    """The outbox key of a payment's PIX-code message: one code message per payment."""
    return f"{CODE_KEY_PREFIX}{payment_id.hex}"


def status_behind_code(db: Database, key: str) -> str | None:
    """The status of the payment whose code message has this outbox key."""
    if not key.startswith(CODE_KEY_PREFIX):
        return None
    with db.session() as session:
        return session.scalar(
            select(Payment.status).where(Payment.id == uuid.UUID(key[len(CODE_KEY_PREFIX) :]))
        )


def settled_before_its_code(db: Database, kind: str, key: str) -> str | None:
    """For a PIX-code message whose payment is no longer pending, that payment's status:
    a code held back (its job died, or was slow) until its payment was paid, expired or
    failed must not be sent, it would only confuse the buyer. None for any other message."""
    if kind != CODE_KIND:
        return None
    status = status_behind_code(db, key)
    return None if status == PENDING else str(status)
