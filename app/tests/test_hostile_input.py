"""Requests crafted to break the webhooks get a clean 4xx, never a 5xx, and leave no trace
(issue 12's findings, each with its test)."""

from __future__ import annotations

import json
import socket

import orjson
import pytest
from grimbots.lab.servers import free_port
from grimbots.models import PaymentEvent
from grimbots.settings import load_settings
from grimbots.web import create_wsgi_app
from payment_support import PIX_PATH, callback_body, pending_payment, signed
from support import count, start_message
from werkzeug.test import Client

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def production_client(settings) -> Client:
    return Client(create_wsgi_app(settings))


@pytest.mark.parametrize(
    "bot_id", [str(n) for n in (2**31, 2**31 + 7, 2**63, 2**64 + 1)] + ["9" * 30, "1" * 5000]
)
def test_bot_id_past_the_column_is_404_before_any_lookup(bot_id: str, env, bot):
    """With the database down, a lookup would answer 503: a 404 proves there was none."""
    closed = free_port()
    settings = load_settings(
        env | {"GRIMBOTS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{closed}/x"}
    )
    client = production_client(settings)
    headers = {SECRET_HEADER: bot.secret}
    body = orjson.dumps(start_message(1, 42))
    assert client.post(f"/webhook/telegram/{bot_id}", data=body, headers=headers).status_code == 404
    # An id in range that the cache does not know does need the database: 503, retried.
    assert client.post("/webhook/telegram/424242", data=body, headers=headers).status_code == 503


@pytest.mark.parametrize("update_id", [2**63, 2**64 - 1, 2**64, -1])
def test_update_id_past_64_bits_is_400_and_not_enqueued(update_id, settings, bot, redis_client):
    body = json.dumps(start_message(1, 42) | {"update_id": update_id}).encode()  # > 64 bits
    response = production_client(settings).post(
        f"/webhook/telegram/{bot.id}", data=body, headers={SECRET_HEADER: bot.secret}
    )
    assert response.status_code == 400
    assert redis_client.llen("rq:queue:tasks") == 0


@pytest.mark.parametrize("length", ["-1", "-9999999", "1e3", "0x10", "12abc"])
def test_bad_content_length_is_400(length, settings, bot, redis_client):
    client = production_client(settings)
    for path, headers in (
        (f"/webhook/telegram/{bot.id}", {SECRET_HEADER: bot.secret}),
        (PIX_PATH, signed(b"{}")),
    ):
        response = client.post(
            path,
            data=b'{"update_id": 5}',
            headers=headers,
            environ_overrides={"CONTENT_LENGTH": length},
        )
        assert response.status_code == 400, (path, response.get_data())
    assert redis_client.llen("rq:queue:tasks") == 0


def raw_request(port: int, request: bytes) -> int:
    """Send bytes to gunicorn as they are; the status of its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc\r\n0\r\n\r\n", b"3;x=\x00\r\nabc\r\n0\r\n\r\n"],
    ids=["bad-size", "short-chunk", "bad-extension"],
)
def test_malformed_chunked_body_is_400_on_both_webhooks(chunks, start_web, bot, redis_client):
    """Through real gunicorn, whose chunked parser raises from the app's read()."""
    port = int(start_web(workers=1).rsplit(":", 1)[1])
    for path, extra in (
        (f"/webhook/telegram/{bot.id}", f"{SECRET_HEADER}: {bot.secret}\r\n"),
        (PIX_PATH, "X-Pix-Signature: sha256=00\r\n"),
    ):
        request = (
            f"POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: application/json\r\n{extra}Connection: close\r\n\r\n"
        ).encode() + chunks
        assert raw_request(port, request) == 400, path
    assert redis_client.llen("rq:queue:tasks") == 0


@pytest.mark.parametrize("horario", ["0001-01-01T00:00:00+03:00", "9999-12-31T23:59:59-03:00"])
def test_extreme_horario_is_refused_without_holding_back_the_others(
    horario, settings, bot, services, redis_client
):
    payment = pending_payment(services, bot, 1301)
    good = orjson.loads(callback_body(payment.txid))["pix"][0]
    bad = {**good, "endToEndId": "E" + "7" * 31, "horario": horario}
    body = orjson.dumps({"pix": [bad, good]})
    assert (
        production_client(settings).post(PIX_PATH, data=body, headers=signed(body)).status_code
        == 200
    )
    with services.db.session() as session:
        assert [e.event_key for e in session.query(PaymentEvent)] == [good["endToEndId"]]
    # Every entry bad: refused whole, nothing stored, nothing queued.
    body = orjson.dumps({"pix": [bad]})
    assert (
        production_client(settings).post(PIX_PATH, data=body, headers=signed(body)).status_code
        == 400
    )
    assert count(services, PaymentEvent) == 1
    assert redis_client.llen("rq:queue:webhook") == 1


@pytest.mark.parametrize(
    "valor", ["\u0661\u0669.\u0669\u0660", "\uff11\uff19.\uff19\uff10", "19.\u0669\u0660"]
)
def test_non_ascii_digits_are_not_money(valor, settings, bot, services):
    payment = pending_payment(services, bot, 1302)
    body = callback_body(payment.txid, amount=valor)
    assert (
        production_client(settings).post(PIX_PATH, data=body, headers=signed(body)).status_code
        == 400
    )
    assert count(services, PaymentEvent) == 0
