"""The webhook: every bad input is refused with its status and leaves no trace."""

from __future__ import annotations

import io

import orjson
import pytest
from grimbots.lab.servers import free_port
from grimbots.models import InboundUpdate, OutboxMessage
from grimbots.settings import load_settings
from grimbots.web import create_wsgi_app
from sqlalchemy import func, select
from support import start_message
from werkzeug.test import Client

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


@pytest.fixture
def client(settings) -> Client:
    return Client(create_wsgi_app(settings))


def _post(client, bot_id, body, secret, chunked=False):
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    if chunked:
        # No Content-Length, as with Transfer-Encoding: chunked (gunicorn marks the input
        # as terminated, which is what lets Werkzeug read it).
        return client.post(
            f"/webhook/telegram/{bot_id}",
            input_stream=io.BytesIO(body),
            headers=headers,
            content_type="application/json",
            environ_overrides={"wsgi.input_terminated": True},
        )
    return client.post(
        f"/webhook/telegram/{bot_id}", data=body, headers=headers, content_type="application/json"
    )


def _assert_no_trace(redis_client, services):
    assert redis_client.llen("rq:queue:tasks") == 0
    assert redis_client.keys("rq:job:*") == []
    assert redis_client.keys("grimbots:dedupe:*") == []
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(InboundUpdate)) == 0
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


GOOD_BODY = orjson.dumps(start_message(1, 42))


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong secret", 403),
        ("missing secret", 403),
        ("unknown bot", 404),
        ("too large", 413),
        ("too large, no length", 413),
        ("not json", 400),
        ("json array", 400),
        ("no update_id", 400),
        ("string update_id", 400),
        ("boolean update_id", 400),
    ],
)
def test_bad_input_is_refused_and_leaves_no_trace(
    case, status, client, bot, redis_client, services
):
    bot_id, secret, body, chunked = bot.id, bot.secret, GOOD_BODY, False
    big = b'{"update_id": 1, "pad": "' + b"x" * (1024 * 1024) + b'"}'
    if case == "wrong secret":
        secret = bot.secret + "x"
    elif case == "missing secret":
        secret = None
    elif case == "unknown bot":
        bot_id = bot.id + 1000
    elif case == "too large":
        body = big
    elif case == "too large, no length":
        body, chunked = big, True
    elif case == "not json":
        body = b"update_id=1"
    elif case == "json array":
        body = b"[1, 2]"
    elif case == "no update_id":
        body = b'{"message": {}}'
    elif case == "string update_id":
        body = b'{"update_id": "1"}'
    elif case == "boolean update_id":
        body = b'{"update_id": true}'
    response = _post(client, bot_id, body, secret, chunked)
    assert response.status_code == status, response.get_data()
    _assert_no_trace(redis_client, services)


def test_accepts_once_and_answers_duplicates_200(client, bot, redis_client):
    first = _post(client, bot.id, GOOD_BODY, bot.secret)
    again = _post(client, bot.id, GOOD_BODY, bot.secret)
    assert (first.status_code, again.status_code) == (200, 200)
    assert redis_client.lrange("rq:queue:tasks", 0, -1) == [f"tg-{bot.id}-1".encode()]
    assert redis_client.ttl(f"grimbots:dedupe:{bot.id}:1") > 0


def test_chunked_body_is_accepted(client, bot, redis_client):
    assert _post(client, bot.id, GOOD_BODY, bot.secret, chunked=True).status_code == 200
    assert redis_client.llen("rq:queue:tasks") == 1


def test_redis_down_answers_503_not_200(env, bot, redis_server):
    # A Redis that is not running: a port nobody listens on.
    settings = load_settings(env | {"GRIMBOTS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    client = Client(create_wsgi_app(settings))
    response = _post(client, bot.id, GOOD_BODY, bot.secret)
    assert response.status_code == 503
    assert redis_server.client().llen("rq:queue:tasks") == 0


def test_survives_a_redis_restart(settings, bot, redis_server, redis_client):
    """Pooled sockets die with the server; the next request must not be lost or doubled."""
    client = Client(create_wsgi_app(settings))
    assert _post(client, bot.id, GOOD_BODY, bot.secret).status_code == 200
    redis_server.stop()
    assert _post(client, bot.id, orjson.dumps(start_message(2, 42)), bot.secret).status_code == 503
    redis_server.start()  # empty: no dedupe keys, no scripts loaded
    assert _post(client, bot.id, orjson.dumps(start_message(3, 42)), bot.secret).status_code == 200
    assert redis_client.lrange("rq:queue:tasks", 0, -1) == [f"tg-{bot.id}-3".encode()]
