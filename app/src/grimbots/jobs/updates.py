"""Job on `tasks`: handle one Telegram update (enqueued by the webhook, see grimbots.ingest)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select

from grimbots import outbox
from grimbots.db import insert_for
from grimbots.jobs import current_job_id, tracked
from grimbots.jobs.gateway import enqueue_charge
from grimbots.jobs.messages import deliver
from grimbots.logs import event
from grimbots.models import Bot, InboundUpdate, Lead, Offer
from grimbots.pix import brl_label
from grimbots.services import get_services

log = logging.getLogger(__name__)

DEFAULT_WELCOME = "Welcome! Choose an offer below."
POINT_TO_OFFERS = "Send /start to see our offers."
BUY_PREFIX = "buy:"


@dataclass(frozen=True)
class Sender:
    user_id: int
    chat_id: int
    first_name: str | None
    username: str | None


@dataclass(frozen=True)
class Reply:
    kind: str
    method: str
    payload: dict[str, Any]


def classify(update: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    for kind in ("message", "callback_query", "edited_message", "my_chat_member"):
        if isinstance(update.get(kind), dict):
            return kind, update[kind]
    return "other", None


def sender_of(kind: str, body: dict[str, Any]) -> Sender | None:
    user = body.get("from")
    if not isinstance(user, dict) or not isinstance(user.get("id"), int):
        return None
    chat = body.get("chat")
    if kind == "callback_query" and isinstance(body.get("message"), dict):
        chat = body["message"].get("chat")
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    return Sender(
        user_id=user["id"],
        chat_id=chat_id if isinstance(chat_id, int) else user["id"],
        first_name=user.get("first_name"),
        username=user.get("username"),
    )


def offers_keyboard(offers: list[Offer]) -> dict[str, Any]:
    return {
        "inline_keyboard": [
            [
                {
                    "text": f"{o.name} - {brl_label(o.price_cents)}",
                    "callback_data": f"{BUY_PREFIX}{o.id}",
                }
            ]
            for o in offers
        ]
    }


def is_start_command(text: object) -> bool:
    if not isinstance(text, str) or not text.strip():
        return False
    command = text.split(maxsplit=1)[0]
    return command == "/start" or command.startswith("/start@")  # "/start@MyBot" in groups


def decide(
    session, bot: Bot, kind: str, body: dict[str, Any], chat_id: int
) -> tuple[list[Reply], int | None]:
    """What to answer; also the offer id when the user pressed a buy button."""
    if kind == "message":
        if is_start_command(body.get("text")):
            offers = list(
                session.scalars(select(Offer).where(Offer.bot_id == bot.id).order_by(Offer.id))
            )
            payload: dict[str, Any] = {
                "chat_id": chat_id,
                "text": bot.welcome_text or DEFAULT_WELCOME,
            }
            if offers:
                payload["reply_markup"] = offers_keyboard(offers)
            return [Reply("welcome", "sendMessage", payload)], None
        return [Reply("reply", "sendMessage", {"chat_id": chat_id, "text": POINT_TO_OFFERS})], None

    if kind == "callback_query":
        data = body.get("data")
        answer: dict[str, Any] = {"callback_query_id": str(body.get("id", ""))}
        offer_id = None
        if (
            isinstance(data, str)
            and data.startswith(BUY_PREFIX)
            and data[len(BUY_PREFIX) :].isdigit()
        ):
            candidate = int(data[len(BUY_PREFIX) :])
            offer = session.scalar(
                select(Offer).where(Offer.id == candidate, Offer.bot_id == bot.id)
            )
            if offer is not None:
                offer_id = offer.id
                answer["text"] = f"Preparing your PIX payment for {offer.name}..."
            else:
                answer["text"] = "This offer is no longer available."
        return [Reply("callback_answer", "answerCallbackQuery", answer)], offer_id

    return [], None  # edits, membership changes...: recorded, not answered


@tracked
def process_update(bot_id: int, update_id: int, update_json: str) -> str:
    services = get_services()
    fields = {"bot_id": bot_id, "update_id": update_id, "job_id": current_job_id()}
    update = orjson.loads(update_json)
    kind, body = classify(update)

    with services.db.session() as session:
        bot = session.get(Bot, bot_id)
        if bot is None:
            event(log, logging.WARNING, "update for unknown bot dropped", **fields)
            return "unknown_bot"
        sender = sender_of(kind, body) if body is not None else None
        insert = insert_for(session)
        lead_id = None
        if sender is not None:
            # Writing to us again means they no longer block the bot.
            values = {
                "chat_id": sender.chat_id,
                "first_name": sender.first_name,
                "username": sender.username,
                "blocked": False,
            }
            session.execute(
                insert(Lead)
                .values(bot_id=bot_id, telegram_user_id=sender.user_id, **values)
                .on_conflict_do_update(index_elements=["bot_id", "telegram_user_id"], set_=values)
            )
            lead_id = session.scalar(
                select(Lead.id).where(
                    Lead.bot_id == bot_id, Lead.telegram_user_id == sender.user_id
                )
            )
        session.execute(
            insert(InboundUpdate)
            .values(bot_id=bot_id, update_id=update_id, kind=kind, lead_id=lead_id)
            .on_conflict_do_nothing(index_elements=["bot_id", "update_id"])
        )
        replies, offer_id = (
            decide(session, bot, kind, body, sender.chat_id) if sender else ([], None)
        )
        outbox_ids = [
            outbox.add(
                session,
                key=outbox.idempotency_key(bot_id, sender.chat_id, update_id, reply.kind),
                bot_id=bot_id,
                lead_id=lead_id,
                chat_id=sender.chat_id,
                kind=reply.kind,
                method=reply.method,
                payload=reply.payload,
            )
            for reply in replies
        ]

    # After the commit: the rows the next steps read are visible to everyone.
    results = [deliver(services, outbox_id) for outbox_id in outbox_ids]
    if offer_id is not None and lead_id is not None:
        enqueue_charge(services, bot_id, lead_id, offer_id, update_id)
    event(
        log, logging.INFO, "update processed", kind=kind, replies=",".join(results) or "-", **fields
    )
    return kind
