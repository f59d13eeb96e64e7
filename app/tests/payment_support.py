"""Helpers for the payment tests: leads, charges, signed callbacks, counting rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
from grimbots import payments
from grimbots.models import Lead
from grimbots.pix.notifications import SIGNATURE_HEADER, sign
from pix_fixtures import WEBHOOK_SECRET

PIX_PATH = "/webhook/pix/apipix"


def make_lead(services, bot, user_id: int) -> int:
    with services.db.session() as session:
        lead = Lead(bot_id=bot.id, telegram_user_id=user_id, chat_id=user_id, first_name="Ana")
        session.add(lead)
        session.flush()
        return lead.id


def pending_payment(services, bot, user_id: int, amount_cents: int = 1990):
    """A pending payment row (no PSP call): enough for callbacks to refer to."""
    lead_id = make_lead(services, bot, user_id)
    with services.db.session() as session:
        payment, _ = payments.open_charge(
            session,
            bot_id=bot.id,
            lead_id=lead_id,
            offer_id=bot.offer_id,
            amount_cents=amount_cents,
            provider="apipix",
        )
    return payment


def callback_body(txid: str | None, amount: str = "19.90", e2e: str | None = None) -> bytes:
    item = {
        "endToEndId": e2e or f"E99999999{uuid.uuid4().hex[:23]}",
        "valor": amount,
        "horario": datetime.now(UTC).isoformat(),
    }
    if txid is not None:
        item["txid"] = txid
    return orjson.dumps({"pix": [item]})


def signed(body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(body, secret), "Content-Type": "application/json"}


def sent_texts(telegram, chat_id: int, containing: str) -> list[str]:
    return [
        c["text"]
        for c in telegram.calls("sendMessage", chat_id=chat_id, status=200)
        if containing in (c["text"] or "")
    ]
