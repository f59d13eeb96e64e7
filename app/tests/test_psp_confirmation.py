"""A payment is confirmed by the PSP, never by a callback body alone (issue 12).

Every test posts a correctly signed callback through the real webhook, then runs the
`webhook` job's logic (settle) against the real PSP stand-in, which answers GET /cob
truthfully unless a test tells it to lie."""

from __future__ import annotations

import pytest
from grimbots import payments
from grimbots.jobs.gateway import create_charge, reconcile
from grimbots.jobs.webhook import settle
from grimbots.models import Delivery, Payment, PaymentEvent
from grimbots.pix import PspUnavailable
from grimbots.web import create_wsgi_app
from payment_support import PIX_PATH, callback_body, make_lead, sent_texts, signed
from sqlalchemy import select, update
from support import count
from werkzeug.test import Client


def charge(services, bot, user_id: int) -> Payment:
    """A real charge at the PSP stand-in (ATIVA), its code sent to the lead."""
    lead_id = make_lead(services, bot, user_id)
    assert create_charge(bot.id, lead_id, bot.offer_id, 1) == "charged"
    with services.db.session() as session:
        return session.scalar(select(Payment).where(Payment.lead_id == lead_id))


def post_callback(services, body: bytes) -> int:
    client = Client(create_wsgi_app(services.settings))
    assert client.post(PIX_PATH, data=body, headers=signed(body)).status_code == 200
    with services.db.session() as session:
        return session.scalar(select(PaymentEvent.id).order_by(PaymentEvent.id.desc()))


def event(services, event_id: int) -> PaymentEvent:
    with services.db.session() as session:
        return session.get(PaymentEvent, event_id)


def status(services, payment: Payment) -> str:
    with services.db.session() as session:
        return session.get(Payment, payment.id).status


def deliveries(telegram, user_id: int) -> list[str]:
    return sent_texts(telegram, user_id, "access=")


def test_signed_callback_for_an_unpaid_charge_delivers_nothing(services, bot, psp, telegram):
    payment = charge(services, bot, 1201)  # ATIVA at the PSP: nobody paid
    event_id = post_callback(services, callback_body(payment.txid, "19.90"))
    assert settle(services, event_id) == "not_confirmed"
    assert status(services, payment) == "pending"
    assert count(services, Delivery) == 0 and deliveries(telegram, 1201) == []
    assert [c["endpoint"] for c in psp.calls(txid=payment.txid)][-1] == "cob.get"


def test_callback_with_a_wrong_amount_delivers_nothing(services, bot, psp, telegram):
    payment = charge(services, bot, 1202)
    event_id = post_callback(services, callback_body(payment.txid, "0.01"))
    assert settle(services, event_id) == "not_confirmed"
    assert status(services, payment) == "pending"
    assert deliveries(telegram, 1202) == []


def test_real_payment_is_confirmed_and_delivered_once(services, bot, psp, telegram):
    payment = charge(services, bot, 1203)
    (pix,) = psp.pay(txid=payment.txid)["pix"]  # no notify_url: we post its callback
    body = callback_body(payment.txid, pix["valor"], pix["endToEndId"])
    event_id = post_callback(services, body)
    assert settle(services, event_id) == "confirmed"
    assert settle(services, post_callback(services, body)) == "already_processed"
    assert event(services, event_id).psp_confirmed
    assert status(services, payment) == "paid"
    assert len(deliveries(telegram, 1203)) == 1


def test_forged_end_to_end_id_is_refused_while_the_real_pix_pays(services, bot, psp, telegram):
    payment = charge(services, bot, 1204)
    (pix,) = psp.pay(txid=payment.txid)["pix"]
    forged = post_callback(services, callback_body(payment.txid, pix["valor"], "E" + "1" * 31))
    # The PSP lists another PIX for the charge: that one pays; the forged one does not.
    assert settle(services, forged) == "not_confirmed"
    assert status(services, payment) == "paid"
    with services.db.session() as session:
        (real,) = session.scalars(
            select(PaymentEvent).where(PaymentEvent.event_key == pix["endToEndId"])
        )
    assert real.psp_confirmed and real.outcome == "confirmed"
    assert len(deliveries(telegram, 1204)) == 1


def test_a_real_pix_with_a_misreported_amount_counts_the_psps_amount(services, bot, psp, telegram):
    payment = charge(services, bot, 1205)
    (pix,) = psp.pay(txid=payment.txid)["pix"]
    event_id = post_callback(services, callback_body(payment.txid, "999.99", pix["endToEndId"]))
    assert settle(services, event_id) == "confirmed"
    row = event(services, event_id)
    assert row.callback_mismatch and row.amount_cents == payment.amount_cents
    assert len(deliveries(telegram, 1205)) == 1


def test_psp_confirming_another_amount_fails_the_charge(services, bot, psp, telegram):
    """The PSP itself (here told to lie) reports a PIX of another amount: never paid."""
    payment = charge(services, bot, 1206)
    e2e = "E99999999202612020000abcdef12345"[:32]
    psp.faults(
        lie={
            payment.txid: {
                "status": "CONCLUIDA",
                "pix": [{"endToEndId": e2e, "valor": "1.00", "horario": "2026-12-02T10:00:00Z"}],
            }
        }
    )
    event_id = post_callback(services, callback_body(payment.txid, "1.00", e2e))
    assert settle(services, event_id) == "amount_mismatch"
    assert status(services, payment) == "failed"
    assert count(services, Delivery) == 0 and deliveries(telegram, 1206) == []


def test_psp_unreachable_pays_nothing_and_the_job_retries(services, bot, psp, telegram):
    payment = charge(services, bot, 1207)
    (pix,) = psp.pay(txid=payment.txid)["pix"]
    body = callback_body(payment.txid, pix["valor"], pix["endToEndId"])
    event_id = post_callback(services, body)
    psp.faults(status_503={"count": 1})
    with pytest.raises(PspUnavailable):  # RQ retries the job (EVENT_RETRY)
        settle(services, event_id)
    assert status(services, payment) == "pending" and event(services, event_id).processed_at is None
    assert settle(services, event_id) == "confirmed"
    assert len(deliveries(telegram, 1207)) == 1


def test_early_callback_is_paid_once_the_psp_confirms_it(services, bot, psp, telegram):
    """A callback that beat the PSP's own record: not confirmed at first; when the
    reconciliation later finds the PIX at the PSP, the same event is re-opened and paid."""
    from datetime import timedelta

    payment = charge(services, bot, 1208)
    e2e = "E99999999202612020000early123456"[:32]
    event_id = post_callback(services, callback_body(payment.txid, "19.90", e2e))
    assert settle(services, event_id) == "not_confirmed"
    psp.pay(txid=payment.txid, end_to_end_id=e2e)
    with services.db.session() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment.id)
            .values(created_at=payments.now() - timedelta(hours=1))
        )
    assert reconcile(services)["paid"] == 1
    row = event(services, event_id)
    assert row.psp_confirmed and row.outcome == "confirmed"
    assert count(services, PaymentEvent) == 1
    assert len(deliveries(telegram, 1208)) == 1
