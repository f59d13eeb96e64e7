"""POST /webhook/pix/<provider> in-process, and what the `webhook` job makes of each event."""

from __future__ import annotations

import io

import pytest
from grimbots import metrics
from grimbots.jobs.webhook import settle
from grimbots.lab.servers import free_port
from grimbots.models import Delivery, OutboxMessage, Payment, PaymentEvent
from grimbots.queues import WEBHOOK
from grimbots.settings import load_settings
from grimbots.web import create_wsgi_app
from payment_support import PIX_PATH, callback_body, pending_payment, signed
from rq import Queue
from sqlalchemy import select
from support import count
from werkzeug.test import Client


@pytest.fixture
def client(settings) -> Client:
    return Client(create_wsgi_app(settings))


def post(client, body: bytes, headers: dict, path: str = PIX_PATH, chunked: bool = False):
    if chunked:
        return client.post(
            path,
            input_stream=io.BytesIO(body),
            headers=headers,
            environ_overrides={"wsgi.input_terminated": True},
        )
    return client.post(path, data=body, headers=headers)


def events(services) -> list[PaymentEvent]:
    with services.db.session() as session:
        return list(session.scalars(select(PaymentEvent).order_by(PaymentEvent.id)))


def nothing_paid(services) -> None:
    assert count(services, Payment, status="paid") == 0
    assert count(services, Delivery) == 0
    assert count(services, OutboxMessage) == 0


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong signature", 401),
        ("missing signature", 401),
        ("unknown provider", 404),
        ("malformed", 400),
        ("too large", 413),
        ("too large, no length", 413),
    ],
)
def test_refused_callbacks_store_nothing(case, status, client, bot, services, redis_client):
    payment = pending_payment(services, bot, 501)
    body, headers, path, chunked = callback_body(payment.txid), None, PIX_PATH, False
    failures = metrics.PIX_WEBHOOK_AUTH_FAILURES.labels("apipix")._value.get()
    if case == "wrong signature":
        headers = signed(body, "not-the-secret-0123456789")
    elif case == "missing signature":
        headers = {"Content-Type": "application/json"}
    elif case == "unknown provider":
        path = "/webhook/pix/otherpsp"
    elif case == "malformed":
        body = b'{"pix": [{"txid": "x"}]}'
    elif case.startswith("too large"):
        body = b'{"pix": [], "pad": "' + b"x" * (1024 * 1024) + b'"}'
        chunked = case.endswith("no length")
    response = post(client, body, headers or signed(body), path, chunked)
    assert response.status_code == status, response.get_data()
    assert events(services) == []
    assert redis_client.llen(f"rq:queue:{WEBHOOK}") == 0
    nothing_paid(services)
    new_failures = metrics.PIX_WEBHOOK_AUTH_FAILURES.labels("apipix")._value.get()
    assert new_failures - failures == (1 if status == 401 else 0)


def test_repeated_callback_is_one_event_and_one_job(client, bot, services, redis_client):
    payment = pending_payment(services, bot, 502)
    body = callback_body(payment.txid)
    for _ in range(5):
        assert post(client, body, signed(body)).status_code == 200
    (event,) = events(services)
    assert event.txid == payment.txid and event.source == "webhook"
    assert event.raw_body == body.decode()
    assert Queue(WEBHOOK, connection=redis_client).job_ids == [f"pix-apipix-{event.event_key}"]


def test_unknown_txid_is_kept_and_flagged(client, bot, services):
    pending_payment(services, bot, 503)
    body = callback_body("gb" + "0" * 32)
    assert post(client, body, signed(body)).status_code == 200
    (event,) = events(services)
    assert settle(services, event.id) == "unknown_txid"
    (event,) = events(services)
    assert event.unknown_txid and event.payment_id is None and event.outcome == "unknown_txid"
    nothing_paid(services)


def test_callback_the_psp_does_not_confirm_pays_nothing(client, bot, services):
    """A correctly signed callback with a made-up amount for a charge the PSP never saw:
    recorded, flagged not_confirmed, and the payment stays as it was."""
    payment = pending_payment(services, bot, 504)
    body = callback_body(payment.txid, amount="1.00")
    assert post(client, body, signed(body)).status_code == 200
    (event,) = events(services)
    assert settle(services, event.id) == "not_confirmed"
    (event,) = events(services)
    assert not event.psp_confirmed and event.payment_id == payment.id
    with services.db.session() as session:
        assert session.get(Payment, payment.id).status == "pending"
    assert count(services, Delivery) == 0
    assert count(services, OutboxMessage) == 0
    # Settling it again changes nothing.
    assert settle(services, event.id) == "already_processed"


@pytest.mark.parametrize("down", ["redis", "database"])
def test_storage_down_answers_503(down, env, settings, bot, services):
    payment = pending_payment(services, bot, 505)
    closed = free_port()
    if down == "redis":
        env = env | {"GRIMBOTS_REDIS_URL": f"redis://127.0.0.1:{closed}/0"}
    else:
        env = env | {"GRIMBOTS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{closed}/x"}
    client = Client(create_wsgi_app(load_settings(env)))
    body = callback_body(payment.txid)
    assert post(client, body, signed(body)).status_code == 503
    # The PSP retries; once storage is back, the same callback is taken and queued (with
    # Redis down, the event was stored but its job was not: the repeat queues it).
    assert post(Client(create_wsgi_app(settings)), body, signed(body)).status_code == 200
    assert len(events(services)) == 1
    assert Queue(WEBHOOK, connection=services.redis.raw).count == 1
