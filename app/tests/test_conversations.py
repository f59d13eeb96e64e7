"""Who the bot answers (issue 13): private chats get the sales flow; in groups and
supergroups only a /start meant for this bot is answered, with a link to the private chat;
service messages, other bots' commands, channel posts and the rest are recorded and never
answered. The shapes are this project's own fixtures, written after real Telegram updates."""

from __future__ import annotations

import itertools

import orjson
import pytest
from grimbots.jobs.updates import GROUP_INVITE, POINT_TO_OFFERS, process_update
from grimbots.models import Bot, InboundUpdate, Lead
from support import buy_callback, count

USERNAME = "ShopDemoBot"
GROUP = {"id": -1001234500001, "title": "Deals", "type": "supergroup"}
SMALL_GROUP = {"id": -4567001, "title": "Friends", "type": "group"}
ANA = {"id": 31337, "is_bot": False, "first_name": "Ana", "username": "ana"}
OTHER_BOT = {"id": 5550001, "is_bot": True, "first_name": "Helper", "username": "HelperBot"}
CHANNEL = {"id": -1009876500002, "title": "News", "type": "channel"}
update_ids = itertools.count(1)


def message(chat: dict, sender: dict | None = ANA, **fields) -> dict:
    body = {"message_id": 10, "date": 1733130000, "chat": chat, **fields}
    if sender is not None:
        body["from"] = sender
    return {"update_id": next(update_ids), "message": body}


def private(**fields) -> dict:
    return message({"id": ANA["id"], "first_name": "Ana", "type": "private"}, **fields)


def command(text: str) -> dict:
    return {
        "text": text,
        "entities": [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}],
    }


QUIET = {
    "pinned message": message(GROUP, pinned_message={"message_id": 9, "date": 1, "chat": GROUP}),
    "migrate to supergroup": message(SMALL_GROUP, migrate_to_chat_id=GROUP["id"]),
    "migrate from group": message(
        GROUP, sender=ANA, sender_chat=GROUP, migrate_from_chat_id=SMALL_GROUP["id"]
    ),
    "video chat started": message(GROUP, sender_chat=GROUP, video_chat_started={}),
    "forum topic created": message(
        GROUP,
        message_thread_id=77,
        is_topic_message=True,
        forum_topic_created={"name": "Support", "icon_color": 7322096},
    ),
    "story": message(GROUP, story={"chat": CHANNEL, "id": 4}),
    "dice": message(GROUP, dice={"emoji": "🎲", "value": 5}),
    "another bot's command": message(
        GROUP,
        message_thread_id=77,
        reply_to_message={"message_id": 3, "date": 1, "chat": GROUP, "from": ANA, "text": "spam"},
        **command("/report"),
    ),
    "start for another bot": message(GROUP, **command("/start@HelperBot")),
    "plain text": message(GROUP, text="anyone selling courses?"),
    "new members": message(GROUP, new_chat_members=[ANA]),
    "signed channel post in group": message(
        GROUP, sender=None, sender_chat=CHANNEL, author_signature="Editor", text="hello"
    ),
    "a bot in private": message(
        {"id": OTHER_BOT["id"], "type": "private", "first_name": "Helper"},
        sender=OTHER_BOT,
        text="/start",
    ),
    "channel post": {
        "update_id": 9001,
        "channel_post": {"message_id": 1, "date": 1, "chat": CHANNEL, "text": "/start"},
    },
    "edited message": {
        "update_id": 9002,
        "edited_message": {
            "message_id": 2,
            "date": 1,
            "edit_date": 2,
            "chat": {"id": ANA["id"], "type": "private"},
            "from": ANA,
            "text": "edited",
        },
    },
    "bot added to a chat": {
        "update_id": 9003,
        "my_chat_member": {
            "chat": GROUP,
            "from": ANA,
            "date": 1,
            "old_chat_member": {"user": OTHER_BOT, "status": "left"},
            "new_chat_member": {"user": OTHER_BOT, "status": "member"},
        },
    },
    "poll answer": {
        "update_id": 9004,
        "poll_answer": {"poll_id": "1", "user": ANA, "option_ids": [0]},
    },
}


@pytest.fixture
def named_bot(bot, services):
    with services.db.session() as session:
        session.get(Bot, bot.id).username = USERNAME
    return bot


def run(bot, update: dict) -> str:
    return process_update(bot.id, update["update_id"], orjson.dumps(update).decode())


@pytest.mark.parametrize("case", QUIET)
def test_recorded_and_never_answered(case, named_bot, telegram, services):
    update = QUIET[case]
    run(named_bot, update)
    assert telegram.calls() == [], case
    assert count(services, InboundUpdate, bot_id=named_bot.id, update_id=update["update_id"]) == 1
    assert no_group_leads(services)


def no_group_leads(services) -> bool:
    """A lead's chat is always their private one (chat id = user id), never a group's."""
    with services.db.session() as session:
        return all(lead.chat_id == lead.telegram_user_id for lead in session.query(Lead))


@pytest.mark.parametrize("text", ["/start", f"/start@{USERNAME}", f"/start@{USERNAME.lower()} hi"])
def test_start_in_a_group_is_answered_with_a_link_to_the_private_chat(
    text, named_bot, telegram, services
):
    run(named_bot, message(GROUP, message_thread_id=77, **command(text)))
    (call,) = telegram.calls("sendMessage")
    assert call["chat_id"] == GROUP["id"] and call["text"] == GROUP_INVITE
    (button,) = call["params"]["reply_markup"]["inline_keyboard"][0]
    assert button["url"] == f"https://t.me/{USERNAME}?start=from_group"
    assert call["params"]["reply_parameters"] == {"message_id": 10}
    assert call["params"]["message_thread_id"] == 77
    assert count(services, Lead) == 0 and no_group_leads(services)


def test_start_in_a_group_is_not_answered_while_our_name_is_unknown(bot, telegram):
    run(bot, message(GROUP, **command("/start")))
    assert telegram.calls() == []


def test_private_chats_get_the_welcome_and_a_pointer(named_bot, telegram, services):
    run(named_bot, private(**command("/start")))
    run(named_bot, private(sticker={"file_id": "x", "type": "regular"}))
    run(named_bot, private(text="how much is it?"))
    welcome, sticker, text = telegram.calls("sendMessage")
    assert welcome["text"] == "Welcome to the shop!" and "reply_markup" in welcome["params"]
    assert sticker["text"] == text["text"] == POINT_TO_OFFERS
    assert {c["chat_id"] for c in telegram.calls()} == {ANA["id"]}
    assert count(services, Lead, chat_id=ANA["id"]) == 1


def test_a_buy_pressed_in_a_group_sells_nothing_there(named_bot, telegram, services, redis_client):
    update = buy_callback(next(update_ids), ANA["id"], named_bot.offer_id)
    update["callback_query"]["message"]["chat"] = GROUP
    run(named_bot, update)
    (answer,) = telegram.calls("answerCallbackQuery")
    assert "private chat" in answer["params"]["text"]
    assert telegram.calls("sendMessage") == []
    assert redis_client.llen("rq:queue:gateway") == 0  # no charge
