"""`gateway` jobs in-process against the PSP and Telegram stand-ins: charge outcomes,
reconciliation (expiry, late payments), and a buy with no PSP configured."""

from __future__ import annotations

from datetime import timedelta

import pytest
from grimbots import metrics, outbox, payments, texts
from grimbots.jobs import maintenance
from grimbots.jobs.gateway import (
    PspUnavailable,
    charge_job_id,
    create_charge,
    enqueue_charge,
    reconcile,
)
from grimbots.jobs.messages import retry_job_id, send_outbox_message
from grimbots.jobs.webhook import settle
from grimbots.lab.servers import wait_until
from grimbots.models import Delivery, Lead, OutboxMessage, Payment, PaymentEvent
from grimbots.pix import PixPayment
from grimbots.queues import GATEWAY, TASKS, get_queue
from grimbots.services import init_services
from grimbots.settings import load_settings
from grimbots.web import create_wsgi_app
from payment_support import (
    PIX_PATH,
    callback_body,
    make_lead,
    pending_payment,
    sent_texts,
    signed,
)
from rq import Queue
from rq.job import Job
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


def paid_by_callback(services, psp, txid: str, **pay_spec) -> int:
    """Pay the charge at the PSP stand-in and post its callback; the event's id."""
    (pix,) = psp.pay(txid=txid, **pay_spec)["pix"]
    return post_callback(services, callback_body(txid, pix["valor"], pix["endToEndId"]))


def post_callback(services, body: bytes) -> int:
    client = Client(create_wsgi_app(services.settings))
    assert client.post(PIX_PATH, data=body, headers=signed(body)).status_code == 200
    with services.db.session() as session:
        return session.scalar(select(PaymentEvent.id).order_by(PaymentEvent.id.desc()))


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
    psp.faults(status_503={"count": 1})
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
    assert Client(create_wsgi_app(services.settings)).post(PIX_PATH, data=b"{}").status_code == 404


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


def test_late_payment_is_flagged_paid_late_and_delivered(services, bot, psp, telegram):
    payment = charge(services, bot, 710)
    psp.expire(payment.txid)
    age(services, payment.id, created_at=timedelta(hours=1))
    reconcile(services)
    assert status_of(services, payment.id) == "expired"
    # The PIX raced the expiry: the PSP reports it after all.
    event_id = paid_by_callback(services, psp, payment.txid, allow_removed=True)
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


def test_charge_job_run_again_after_its_charge_was_paid_opens_no_second_charge(
    services, bot, psp, telegram, start_worker
):
    """Found by the chaos load test: the worker died while the code was on its way, the
    buyer paid, and RQ ran the job again. The re-run must stay on its own payment."""
    lead_id = make_lead(services, bot, 712)
    telegram.faults(slow={"delay": 3, "count": 1})
    worker = start_worker(GATEWAY)
    enqueue_charge(services, bot.id, lead_id, bot.offer_id, 1)
    wait_until(lambda: telegram.calls("sendMessage", chat_id=712), what="code in flight")
    worker.kill()
    (payment,) = payments_of(services, lead_id)
    assert settle(services, paid_by_callback(services, psp, payment.txid)) == "confirmed"

    # Run the very job again, as RQ's abandoned-job handling does.
    job_id = charge_job_id(bot.id, 1)
    Queue(GATEWAY, connection=services.redis.raw).enqueue_job(
        Job.fetch(job_id, connection=services.redis.raw)
    )
    start_worker(GATEWAY)
    wait_until(
        lambda: Job.fetch(job_id, connection=services.redis.raw).get_status() == "finished",
        what="re-run finished",
    )
    assert [p.id for p in payments_of(services, lead_id)] == [payment.id]
    assert len(psp.charges()) == 1
    texts = [c["text"] for c in telegram.calls("sendMessage", chat_id=712)]
    assert len(texts) == 2 and "PIX for" in texts[0] and "access=" in texts[1]


def test_maintenance_sends_orphaned_rows_once_but_no_code_of_a_paid_charge(
    services, bot, telegram, start_worker
):
    """Codes a killed job wrote and never sent: the sweep queues them for sending,
    except one waiting for its scheduled retry; a code whose charge was paid is dropped."""
    waiting, paid, retrying = (pending_payment(services, bot, u) for u in (713, 714, 715))
    rows = {p.lead_id: code_row(services, p) for p in (waiting, paid, retrying)}
    pix = PixPayment(f"E99999999{paid.id.hex[:23]}", paid.amount_cents, payments.now())
    event_id = payments.record_status_payment(services.db, "apipix", paid.txid, pix)
    assert settle(services, event_id) == "confirmed"  # as the reconciliation finds it
    get_queue(TASKS, services.redis.raw).enqueue_in(
        timedelta(minutes=10),
        send_outbox_message,
        rows[retrying.lead_id],
        job_id=retry_job_id(rows[retrying.lead_id], 0),
    )
    assert maintenance.sweep(services)["orphaned messages"] == 0  # young rows: their job may run
    with services.db.session() as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(rows.values()))
            .values(updated_at=payments.now() - timedelta(minutes=10))
        )

    start_worker(TASKS)
    assert maintenance.sweep(services)["orphaned messages"] == 2
    wait_until(
        lambda: (
            outbox.status_of(services.db, rows[paid.lead_id]) == "failed"
            and outbox.status_of(services.db, rows[waiting.lead_id]) == "sent"
        ),
        what="orphans handled",
    )
    assert maintenance.sweep(services)["orphaned messages"] == 0
    assert len(sent_texts(telegram, 713, "PIX for")) == 1
    assert (
        sent_texts(telegram, 714, "PIX for") == []
        and len(sent_texts(telegram, 714, "access=")) == 1
    )
    assert outbox.status_of(services.db, rows[retrying.lead_id]) == "pending"
    with services.db.session() as session:
        assert (
            session.get(OutboxMessage, rows[paid.lead_id]).error == "not sent: its payment is paid"
        )


def payments_of(services, lead_id: int) -> list[Payment]:
    with services.db.session() as session:
        return list(session.scalars(select(Payment).where(Payment.lead_id == lead_id)))


def code_row(services, payment: Payment) -> int:
    """The code message a create_charge job writes, left pending as a killed job leaves it."""
    with services.db.session() as session:
        return outbox.add_text(
            session,
            key=payments.code_key(payment.id),
            lead=session.get(Lead, payment.lead_id),
            kind=payments.CODE_KIND,
            text=texts.pix_code_text("Curso", payment.amount_cents, "000201-test"),
        )
