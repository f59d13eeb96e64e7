"""Job on `tasks`: handle one Telegram update (enqueued by grimbots.telegram_ingest)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from grimbots import outbox
from grimbots.bot_profiles import BotProfile, OfferInfo
from grimbots.db import insert_for
from grimbots.jobs import current_job_id, tracked
from grimbots.jobs.gateway import enqueue_charge
from grimbots.jobs.messages import send_claimed
from grimbots.logs import event
from grimbots.models import InboundUpdate, Lead
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


def offers_keyboard(offers: Sequence[OfferInfo]) -> dict[str, Any]:
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


def for_us(command: Command, bot: BotProfile) -> bool:
    """In a group: "/start@ThisBot", or "/start" naming no bot, when we know our name."""
    if not bot.username:
        return False
    return command.bot is None or command.bot.lower() == bot.username.lower()


def decide(
    bot: BotProfile, kind: str, body: dict[str, Any], sender: Sender
) -> tuple[list[Reply], int | None]:
    """What to answer one update; also the offer id when the user pressed a buy button.

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
            payload: dict[str, Any] = {
                "chat_id": sender.chat_id,
                "text": bot.welcome_text or DEFAULT_WELCOME,
            }
            if bot.offers:
                payload["reply_markup"] = offers_keyboard(bot.offers)
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
            offer = bot.offer(int(data[len(BUY_PREFIX) :]))
            if offer is not None:
                offer_id = offer.id
                answer["text"] = f"Preparing your PIX payment for {offer.name}..."
            else:
                answer["text"] = "This offer is no longer available."
        return [Reply("callback_answer", "answerCallbackQuery", answer)], offer_id

    return [], None  # edits, membership changes...: recorded, not answered


def group_invite(bot: BotProfile, body: dict[str, Any], chat_id: int) -> Reply:
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
    """RQ job for one update (the webhook enqueues one per update). A worker that finds
    several waiting runs them together through process_updates (grimbots.worker)."""
    return process_updates([(bot_id, update_id, update_json)], [current_job_id()])[0]


@dataclass
class _Update:
    bot: BotProfile
    update_id: int
    kind: str
    sender: Sender | None
    replies: list[Reply]
    offer_id: int | None
    job_id: str | None

    @property
    def outbox_keys(self) -> list[str]:
        if self.sender is None:
            return []
        chat_id = self.sender.chat_id
        return [
            outbox.idempotency_key(self.bot.id, chat_id, self.update_id, r.kind)
            for r in self.replies
        ]


def process_updates(
    updates: Sequence[tuple[int, int, str]], job_ids: Sequence[str | None]
) -> list[str]:
    """Handle updates (bot_id, update_id, update_json); returns each one's kind.

    The effects of each update are those of handling it alone, in a fixed number of
    statements for the whole batch: one transaction upserts the leads, records the
    inbound updates (unique per bot and update), creates the outbox rows (unique keys)
    and claims them (pending -> sending); it commits before any Bot API call, then the
    replies go out concurrently (grimbots.jobs.messages.send_claimed).
    """
    services = get_services()
    kinds: list[str] = []
    work: list[_Update] = []
    for (bot_id, update_id, update_json), job_id in zip(updates, job_ids, strict=True):
        kind, body = classify(orjson.loads(update_json))
        kinds.append(kind)
        bot = services.bots.get(bot_id)
        if bot is None:
            event(
                log,
                logging.WARNING,
                "update for unknown bot dropped",
                bot_id=bot_id,
                update_id=update_id,
                job_id=job_id,
            )
            kinds[-1] = "unknown_bot"
            continue
        sender = sender_of(kind, body) if body is not None else None
        replies, offer_id = decide(bot, kind, body, sender) if sender else ([], None)
        work.append(_Update(bot, update_id, kind, sender, replies, offer_id, job_id))
    if not work:
        return kinds

    with services.db.session() as session:
        lead_ids = _upsert_leads(session, work)
        inbound = {
            (u.bot.id, u.update_id): {
                "bot_id": u.bot.id,
                "update_id": u.update_id,
                "kind": u.kind,
                "lead_id": lead_ids.get((u.bot.id, u.sender.user_id)) if u.sender else None,
            }
            for u in work
        }
        session.connection().execute(
            _statements(insert_for(session))["inbound"], [inbound[k] for k in sorted(inbound)]
        )
        rows = [
            {
                "key": key,
                "bot_id": u.bot.id,
                "lead_id": lead_ids.get((u.bot.id, u.sender.user_id)),
                "chat_id": u.sender.chat_id,
                "kind": r.kind,
                "method": r.method,
                "payload": r.payload,
            }
            for u in work
            if u.sender is not None
            for r, key in zip(u.replies, u.outbox_keys, strict=True)
        ]
        outbox_ids = outbox.add_many(session, rows)
        claimed = outbox.claim_in(session, list(set(outbox_ids.values())))

    # Committed: the claimed rows are `sending` and ours alone to send.
    outcomes = send_claimed(services, claimed)
    unclaimed = [i for i in outbox_ids.values() if i not in outcomes]
    for outbox_id, status in outbox.statuses_of(services.db, unclaimed).items():
        outcomes[outbox_id] = f"skipped:{status}"
    for u in work:
        lead_id = lead_ids.get((u.bot.id, u.sender.user_id)) if u.sender else None
        if u.offer_id is not None and lead_id is not None:
            enqueue_charge(services, u.bot.id, lead_id, u.offer_id, u.update_id)
        results = [outcomes[outbox_ids[key]] for key in u.outbox_keys]
        event(
            log,
            logging.INFO,
            "update processed",
            kind=u.kind,
            replies=",".join(results) or "-",
            bot_id=u.bot.id,
            update_id=u.update_id,
            job_id=u.job_id,
        )
    return kinds


def _upsert_leads(session, work: list[_Update]) -> dict[tuple[int, int], int]:
    """Insert or refresh the lead of every sender; {(bot id, Telegram user id): lead id}.
    Writing to us again means they no longer block the bot. One row per lead (the last
    update's names win), in key order so concurrent batches lock leads in the same order."""
    values = {
        (u.bot.id, u.sender.user_id): {
            "bot_id": u.bot.id,
            "telegram_user_id": u.sender.user_id,
            "chat_id": u.sender.chat_id,
            "first_name": u.sender.first_name,
            "username": u.sender.username,
            "blocked": False,
        }
        for u in sorted(work, key=lambda u: u.update_id)
        if u.sender is not None and u.sender.private  # a lead's chat is their private one
    }
    if not values:
        return {}
    rows = session.connection().execute(
        _statements(insert_for(session))["leads"], [values[k] for k in sorted(values)]
    )
    return {(r.bot_id, r.telegram_user_id): r.id for r in rows}


@functools.cache
def _statements(insert) -> dict[str, Any]:
    """The batch's INSERTs for one dialect, built once. Core statements on the tables run
    with a list of rows (SQLAlchemy's executemany, one round trip), compiled once."""
    leads = insert(Lead.__table__)
    refreshed = ("chat_id", "first_name", "username", "blocked")
    return {
        "leads": leads.on_conflict_do_update(
            index_elements=["bot_id", "telegram_user_id"],
            set_={c: leads.excluded[c] for c in refreshed},
        ).returning(leads.table.c.bot_id, leads.table.c.telegram_user_id, leads.table.c.id),
        "inbound": insert(InboundUpdate.__table__).on_conflict_do_nothing(
            index_elements=["bot_id", "update_id"]
        ),
    }
