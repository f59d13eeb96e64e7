"""`gateway` jobs in-process against the PSP and Telegram stand-ins: charge outcomes,
reconciliation (expiry, late payments), and a buy with no PSP configured."""

from __future__ import annotations

from datetime import timedelta

import pytest
from grimbots import metrics, payments
from grimbots.jobs.gateway import PspUnavailable, create_charge, reconcile
from grimbots.jobs.webhook import settle
from grimbots.models import Delivery, Payment, PaymentEvent
from grimbots.services import init_services
from grimbots.settings import load_settings
from grimbots.web import create_app
from payment_support import PIX_PATH, callback_body, make_lead, sent_texts, signed
from sqlalchemy import select, update
from support import count
from werkzeug.test import Client


def charge(services, bot, user_id: int, update_id: int = 1) -> Payment:
    lead_id = make_lead(services, bot, user_id)
    assert create_charge(bot.id, lead_id, bot.offer_id, update_id) == "charged"
    with services.db.session() as session:
        return session.scalar(select(Payment).where(Payment.lead_id == lead_id))


def age(services, payment_id, **deltas: timedelta) -> None:
    """Move a payment's timestamps into the past (as if time had passed)."""
    with services.db.session() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values({name: payments.now() - delta for name, delta in deltas.items()})
        )


def status_of(services, payment_id) -> str:
    with services.db.session() as session:
        return session.get(Payment, payment_id).status


def test_charge_is_created_once_and_reused(services, bot, psp, telegram):
    payment = charge(services, bot, 701)
    assert payment.status == "pending" and payment.pix_copy_paste.startswith("000201")
    (at_psp,) = psp.charges()
    assert at_psp["txid"] == payment.txid and at_psp["valor"]["original"] == "19.90"
    # A second "buy" from the same lead: the same charge, no second code message.
    assert create_charge(bot.id, payment.lead_id, bot.offer_id, 2) == "charged"
    assert len(psp.charges()) == 1 and count(services, Payment) == 1
    assert len(sent_texts(telegram, 701, payment.pix_copy_paste)) == 1


def test_psp_down_is_retried_asking_for_the_status_first(services, bot, psp, telegram):
    lead_id = make_lead(services, bot, 702)
    psp.faults(status_500={"count": 1})
    with pytest.raises(PspUnavailable):  # RQ retries the job (CHARGE_RETRY)
        create_charge(bot.id, lead_id, bot.offer_id, 1)
    assert psp.charges() == []
    assert create_charge(bot.id, lead_id, bot.offer_id, 1) == "charged"
    # The retry asked about the charge before creating it: the first answer could be lost.
    endpoints = [c["endpoint"] for c in psp.calls() if c["endpoint"] != "token"]
    assert endpoints == ["cob.put", "cob.get", "cob.put"]
    assert len(psp.charges()) == 1
    assert len(sent_texts(telegram, 702, "PIX for")) == 1


def test_lost_answer_is_unknown_then_found_at_the_psp(services, bot, psp, telegram):
    lead_id = make_lead(services, bot, 703)
    psp.faults(slow={"delay": 3, "count": 1})  # read timeout is 2 s: the PUT's answer is lost
    with pytest.raises(PspUnavailable):
        create_charge(bot.id, lead_id, bot.offer_id, 1)
    assert len(psp.charges()) == 1  # it was created, we just did not hear
    assert create_charge(bot.id, lead_id, bot.offer_id, 1) == "charged"
    assert len(psp.charges()) == 1
    assert len(sent_texts(telegram, 703, "PIX for")) == 1


def test_rejected_charge_fails_and_tells_the_buyer(env, bot, psp, telegram):
    services = init_services(load_settings(env | {"GRIMBOTS_PIX_KEY": "someone-else@example"}))
    lead_id = make_lead(services, bot, 704)
    assert create_charge(bot.id, lead_id, bot.offer_id, 1) == "failed"
    with services.db.session() as session:
        payment = session.scalar(select(Payment))
    assert payment.status == "failed" and "refused" in payment.failure_reason
    assert len(sent_texts(telegram, 704, "could not create")) == 1
    # The lead can try again: a failed charge does not hold the "one pending" slot.
    assert psp.charges() == []


def test_buy_without_a_psp_fails_loudly(env, bot, telegram, caplog):
    from conftest import without_psp

    services = init_services(load_settings(without_psp(env)))
    assert services.pix is None
    lead_id = make_lead(services, bot, 705)
    before = metrics.PIX_CHARGES.labels("no_psp")._value.get()
    assert create_charge(bot.id, lead_id, bot.offer_id, 1) == "no_psp"
    assert metrics.PIX_CHARGES.labels("no_psp")._value.get() == before + 1
    assert any(r.levelname == "ERROR" and "no PSP" in r.getMessage() for r in caplog.records)
    assert len(sent_texts(telegram, 705, "not available")) == 1
    assert count(services, Payment) == 0
    # The PIX webhook does not exist on such a box.
    assert Client(create_app(services.settings)).post(PIX_PATH, data=b"{}").status_code == 404


def test_reconciliation_expires_a_removed_charge(services, bot, psp):
    payment = charge(services, bot, 706)
    fresh = charge(services, bot, 707)
    psp.expire(payment.txid)
    psp.expire(fresh.txid)
    age(services, payment.id, created_at=timedelta(hours=1))
    counts = reconcile(services)  # only charges older than reconcile_after_seconds
    assert counts["expired"] == 1
    assert status_of(services, payment.id) == "expired"
    assert status_of(services, fresh.id) == "pending"


def test_reconciliation_gives_up_a_charge_long_past_expiry(services, bot, psp):
    payment = charge(services, bot, 708)  # still ATIVA at the PSP
    age(services, payment.id, created_at=timedelta(hours=2), expires_at=timedelta(hours=1))
    assert reconcile(services)["expired"] == 1
    assert status_of(services, payment.id) == "expired"


def test_reconciliation_confirms_a_payment_whose_callback_never_came(services, bot, psp, telegram):
    payment = charge(services, bot, 709)
    psp.pay(txid=payment.txid)  # no notify_url: the callback is lost
    age(services, payment.id, created_at=timedelta(hours=1))
    assert reconcile(services)["paid"] == 1
    assert status_of(services, payment.id) == "paid"
    with services.db.session() as session:
        (event,) = session.scalars(select(PaymentEvent))
    assert (event.source, event.outcome) == ("reconcile", "confirmed")
    assert len(sent_texts(telegram, 709, "access=")) == 1


def test_late_payment_is_flagged_paid_late_and_delivered(services, settings, bot, psp, telegram):
    payment = charge(services, bot, 710)
    psp.expire(payment.txid)
    age(services, payment.id, created_at=timedelta(hours=1))
    reconcile(services)
    assert status_of(services, payment.id) == "expired"
    # The PIX raced the expiry: the PSP reports it after all.
    (pix,) = psp.pay(txid=payment.txid, allow_removed=True)["pix"]
    body = callback_body(payment.txid, pix["valor"], pix["endToEndId"])
    client = Client(create_app(settings))
    assert client.post(PIX_PATH, data=body, headers=signed(body)).status_code == 200
    with services.db.session() as session:
        event_id = session.scalar(select(PaymentEvent.id))
    before = metrics.PAYMENTS_CONFIRMED.labels("apipix", "true")._value.get()
    assert settle(services, event_id) == "late"
    assert metrics.PAYMENTS_CONFIRMED.labels("apipix", "true")._value.get() == before + 1
    with services.db.session() as session:
        event = session.get(PaymentEvent, event_id)
        assert event.late and not event.amount_mismatch and event.outcome == "late"
        row = session.get(Payment, payment.id)
        assert row.status == "paid_late" and row.paid_at is not None
    assert count(services, Delivery) == 1
    assert len(sent_texts(telegram, 710, "access=")) == 1
