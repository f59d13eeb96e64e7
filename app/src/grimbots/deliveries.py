"""Deliveries: the access a paid charge buys, as a deliveries row and its outbox message.

Created only by the winner of a payment's move to paid/paid_late (grimbots.payments), in
the same transaction; re-sent only on an operator's explicit request, under a new key.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from grimbots import outbox
from grimbots.db import Database, insert_for
from grimbots.models import Delivery, Lead, Offer, OutboxMessage, Payment
from grimbots.statuses import OutboxStatus
from grimbots.texts import delivery_text


def access_link(link: str, token: str) -> str:
    return f"{link}{'&' if '?' in link else '?'}access={token}"


def delivery_key(payment_id: uuid.UUID) -> str:
    return f"pix:delivery:{payment_id.hex}"


def create_delivery(session: Session, payment: Payment) -> int:
    """The delivery row and its outbox message; called by the compare-and-set winner."""
    offer = session.get(Offer, payment.offer_id)
    lead = session.get(Lead, payment.lead_id)
    token = secrets.token_urlsafe(24)
    key = delivery_key(payment.id)
    text = delivery_text(offer.name, access_link(offer.access_link, token))
    outbox_id = outbox.add_text(session, key=key, lead=lead, kind="delivery", text=text)
    insert = insert_for(session)
    session.execute(
        insert(Delivery)
        .values(
            payment_id=payment.id, access_token=token, outbox_key=key, outbox_message_id=outbox_id
        )
        .on_conflict_do_nothing(index_elements=["payment_id"])
    )
    return outbox_id


def pending_delivery_outbox_id(db: Database, payment_id: uuid.UUID) -> int | None:
    """The delivery's outbox row if it still waits to be sent (e.g. after a crash)."""
    with db.session() as session:
        return session.scalar(
            select(OutboxMessage.id)
            .join(Delivery, Delivery.outbox_message_id == OutboxMessage.id)
            .where(Delivery.payment_id == payment_id, OutboxMessage.status == OutboxStatus.PENDING)
        )


def resend_delivery(db: Database, payment_id: uuid.UUID) -> tuple[int, str] | None:
    """An operator's explicit re-send: a new outbox row with its own key; (id, key)."""
    with db.session() as session:
        row = session.execute(
            select(Delivery, Offer, Lead)
            .join(Payment, Payment.id == Delivery.payment_id)
            .join(Offer, Offer.id == Payment.offer_id)
            .join(Lead, Lead.id == Payment.lead_id)
            .where(Delivery.payment_id == payment_id)
        ).first()
        if row is None:
            return None
        delivery, offer, lead = row
        key = f"pix:resend:{delivery.id}:{uuid.uuid4().hex}"
        text = delivery_text(offer.name, access_link(offer.access_link, delivery.access_token))
        outbox_id = outbox.add_text(session, key=key, lead=lead, kind="delivery_resend", text=text)
        return outbox_id, key


def list_deliveries(
    db: Database, bot_id: int | None = None, status: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Deliveries with their payment and the state of their outbox message (newest first)."""
    query = (
        select(
            Delivery.id,
            Delivery.payment_id,
            Delivery.created_at,
            Payment.bot_id,
            Payment.lead_id,
            Payment.offer_id,
            Payment.amount_cents,
            Payment.status.label("payment_status"),
            OutboxMessage.status.label("message_status"),
            OutboxMessage.sent_at,
            OutboxMessage.error,
        )
        .join(Payment, Payment.id == Delivery.payment_id)
        .outerjoin(OutboxMessage, OutboxMessage.id == Delivery.outbox_message_id)
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    if bot_id is not None:
        query = query.where(Payment.bot_id == bot_id)
    if status is not None:
        query = query.where(OutboxMessage.status == status)
    with db.session() as session:
        rows = session.execute(query).all()
    return [
        {
            "id": r.id,
            "payment": str(r.payment_id),
            "bot": r.bot_id,
            "lead": r.lead_id,
            "offer": r.offer_id,
            "amount_cents": r.amount_cents,
            "payment_status": r.payment_status,
            "status": r.message_status,
            "created_at": r.created_at.isoformat() if r.created_at else None,
            "sent_at": r.sent_at.isoformat() if r.sent_at else None,
            "error": r.error,
        }
        for r in rows
    ]
