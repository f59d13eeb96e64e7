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
GROUP_INVITE = "Hi! I take orders in private: tap the button below to open our shop."
BUY_IN_PRIVATE = "Please open a private chat with me to buy."
BUY_PREFIX = "buy:"
# The deep link's start parameter (t.me/<bot>?start=...): where the user came from.
FROM_GROUP = "from_group"


@dataclass(frozen=True)
class Sender:
    """The person behind an update and where we talk to them."""

    user_id: int
    chat_id: int
    first_name: str | None
    username: str | None
    # A private chat with us (chat id = the user's id). Only there do we sell: a lead's
    # chat is their private one, never a group's.
    private: bool


@dataclass(frozen=True)
class Reply:
    kind: str
    method: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Command:
    name: str  # "start" for "/start@ThisBot payload"
    bot: str | None  # "ThisBot", or None when the command names no bot


def classify(update: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    for kind in ("message", "callback_query", "edited_message", "my_chat_member"):
        if isinstance(update.get(kind), dict):
            return kind, update[kind]
    return "other", None


def sender_of(kind: str, body: dict[str, Any]) -> Sender | None:
    """The person who sent it, or None: an update from a bot, or on behalf of a chat (a
    channel, an anonymous group admin), has nobody to answer."""
    user = body.get("from")
    if not isinstance(user, dict) or type(user.get("id")) is not int or user.get("is_bot"):
        return None
    if kind == "message" and body.get("sender_chat") is not None:
        return None
    chat = body.get("chat")
    if kind == "callback_query":
        message = body.get("message")
        chat = message.get("chat") if isinstance(message, dict) else None
    chat = chat if isinstance(chat, dict) else {}
    chat_id = chat.get("id") if type(chat.get("id")) is int else user["id"]
    private = chat.get("type", "private") == "private" and chat_id == user["id"]
    return Sender(
        user_id=user["id"],
        chat_id=chat_id,
        first_name=user.get("first_name") if isinstance(user.get("first_name"), str) else None,
        username=user.get("username") if isinstance(user.get("username"), str) else None,
        private=private,
    )


def command_of(text: object) -> Command | None:
    """The bot command a message starts with: "/start@ThisBot x" -> Command("start", "ThisBot")."""
    if not isinstance(text, str) or not text.startswith("/"):
        return None
    name, _, bot = text.split(maxsplit=1)[0][1:].partition("@")
    return Command(name.lower(), bot or None) if name else None


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


def for_us(command: Command, bot: Bot) -> bool:
    """In a group: "/start@ThisBot", or "/start" naming no bot, when we know our name."""
    if not bot.username:
        return False
    return command.bot is None or command.bot.lower() == bot.username.lower()


def decide(
    session, bot: Bot, kind: str, body: dict[str, Any], sender: Sender
) -> tuple[list[Reply], int | None]:
    """What to answer; also the offer id when the user pressed a buy button.

    A private chat gets the welcome on /start and a pointer to it on anything else. In a
    group or supergroup only a /start meant for this bot is answered, with a link to the
    private chat; service messages, other bots' commands and everything else are recorded
    and never answered, as are edits, channel posts and membership changes.
    """
    if kind == "message":
        command = command_of(body.get("text"))
        if not sender.private:
            if command is not None and command.name == "start" and for_us(command, bot):
                return [group_invite(bot, body, sender.chat_id)], None
            return [], None
        if command is not None and command.name == "start":
            offers = list(
                session.scalars(select(Offer).where(Offer.bot_id == bot.id).order_by(Offer.id))
            )
            payload: dict[str, Any] = {
                "chat_id": sender.chat_id,
                "text": bot.welcome_text or DEFAULT_WELCOME,
            }
            if offers:
                payload["reply_markup"] = offers_keyboard(offers)
            return [Reply("welcome", "sendMessage", payload)], None
        return [
            Reply("reply", "sendMessage", {"chat_id": sender.chat_id, "text": POINT_TO_OFFERS})
        ], None

    if kind == "callback_query":
        data = body.get("data")
        answer: dict[str, Any] = {"callback_query_id": str(body.get("id", ""))}
        offer_id = None
        if not sender.private:
            answer["text"] = BUY_IN_PRIVATE  # a PIX code is never sent to a group
        elif (
            isinstance(data, str)
            and data.startswith(BUY_PREFIX)
            and data[len(BUY_PREFIX) :].isascii()
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


def group_invite(bot: Bot, body: dict[str, Any], chat_id: int) -> Reply:
    """The answer to a /start in a group: a deep link to the private chat, where we sell."""
    payload: dict[str, Any] = {
        "chat_id": chat_id,
        "text": GROUP_INVITE,
        "reply_markup": {
            "inline_keyboard": [
                [
                    {
                        "text": "Open the shop",
                        "url": f"https://t.me/{bot.username}?start={FROM_GROUP}",
                    }
                ]
            ]
        },
    }
    if type(body.get("message_id")) is int:
        payload["reply_parameters"] = {"message_id": body["message_id"]}
    if type(body.get("message_thread_id")) is int:  # a forum topic: answer in the topic
        payload["message_thread_id"] = body["message_thread_id"]
    return Reply("group_invite", "sendMessage", payload)


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
        if sender is not None and sender.private:  # a lead's chat is their private one
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
        replies, offer_id = decide(session, bot, kind, body, sender) if sender else ([], None)
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
