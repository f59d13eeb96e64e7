"""The command line Ansible drives: idempotent JSON answers, set-webhook via the stand-in."""

from __future__ import annotations

import subprocess

import orjson
from grimbots.lab.servers import GRIMBOTS


def grimbots(env, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GRIMBOTS, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_bots_seed_creates_missing_bots_once_and_lists_their_secrets(env):
    first = grimbots(env, "bots", "seed", "--count", "3", "--name-prefix", "lt")
    assert first.returncode == 0, first.stderr
    seeded = orjson.loads(first.stdout)
    assert seeded["created"] == 6  # three bots and one offer each
    assert [b["name"] for b in seeded["bots"]] == ["lt-001", "lt-002", "lt-003"]
    assert all(len(b["secret"]) >= 32 and len(b["offers"]) == 1 for b in seeded["bots"])

    more = orjson.loads(grimbots(env, "bots", "seed", "--count", "4", "--name-prefix", "lt").stdout)
    assert more["created"] == 2 and more["bots"][:3] == seeded["bots"]
    again = orjson.loads(
        grimbots(env, "bots", "seed", "--count", "4", "--name-prefix", "lt").stdout
    )
    assert again == {**more, "created": 0}
    assert grimbots(env, "bots", "seed", "--count", "0").returncode == 2


def test_bots_and_offers_add_are_idempotent(env):
    add = ("bots", "add", "--name", "shop", "--credentials", "-", "--welcome", "Oi")
    first = grimbots(env, *add, stdin='{"token": "123:ABC"}')
    second = grimbots(env, *add, stdin='{"token": "123:ABC"}')
    assert first.returncode == 0, first.stderr
    created = orjson.loads(first.stdout)
    assert created["created"] is True
    assert orjson.loads(second.stdout) == {"id": created["id"], "created": False, "updated": False}
    changed = grimbots(env, *add, stdin='{"token": "123:NEW", "secret": "s3cret-NEW_1"}')
    assert orjson.loads(changed.stdout) == {"id": created["id"], "created": False, "updated": True}

    offer = (
        "offers",
        "add",
        "--bot",
        str(created["id"]),
        "--name",
        "Gold",
        "--price-cents",
        "1990",
        "--access-link",
        "https://t.me/+x",
    )
    assert orjson.loads(grimbots(env, *offer).stdout)["created"] is True
    assert orjson.loads(grimbots(env, *offer).stdout)["created"] is False
    assert (
        grimbots(
            env,
            "offers",
            "add",
            "--bot",
            str(created["id"]),
            "--name",
            "Free",
            "--price-cents",
            "0",
            "--access-link",
            "x",
        ).returncode
        == 2
    )

    listed = grimbots(env, "bots", "list")
    assert orjson.loads(listed.stdout) == [
        {"id": created["id"], "name": "shop", "welcome_text": "Oi"}
    ]
    assert "ABC" not in listed.stdout + listed.stderr + first.stderr


def test_set_webhook_calls_telegram_with_url_and_secret(env, bot, telegram, services):
    result = grimbots(env, "set-webhook", "--bot", str(bot.id), "--url", "https://bots.example/")
    assert result.returncode == 0, result.stderr
    (call,) = telegram.calls("setWebhook")
    assert call["bot_id"] == bot.token_id
    assert call["params"]["url"] == f"https://bots.example/webhook/telegram/{bot.id}"
    assert call["params"]["secret_token"] == bot.secret
    # It learnt the bot's @username from getMe: group commands are told apart with it.
    assert orjson.loads(result.stdout)["username"] == f"sandbox_{bot.token_id}_bot"
    from grimbots.models import Bot

    with services.db.session() as session:
        assert session.get(Bot, bot.id).username == f"sandbox_{bot.token_id}_bot"
    assert bot.token not in result.stdout + result.stderr


def test_bots_add_takes_credentials_only_from_a_file_or_stdin(env, tmp_path):
    """Never on the command line: there is no --token or --secret option at all."""
    refused = grimbots(env, "bots", "add", "--name", "x", "--token", "123:ABC")
    assert refused.returncode == 2 and "No such option" in refused.stderr
    creds = tmp_path / "bot.json"
    creds.write_text('{"token": "456:DEF", "secret": "abc_DEF-123"}')
    made = grimbots(env, "bots", "add", "--name", "from-file", "--credentials", str(creds))
    assert orjson.loads(made.stdout)["created"] is True
    for bad in ("not json", '{"secret": "x"}', '{"token": "1:a", "secret": "no spaces"}'):
        result = grimbots(env, "bots", "add", "--name", "y", "--credentials", "-", stdin=bad)
        assert result.returncode == 2 and "--credentials" in result.stderr, result.stderr
        assert "no spaces" not in result.stderr  # the value itself is never echoed
