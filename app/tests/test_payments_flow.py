"""buy -> charge -> pay -> deliver with real processes: gunicorn, `grimbots worker` for each
queue, redis-server, PostgreSQL, the PSP and Telegram stand-ins. Counted at the stand-ins."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from grimbots import metrics, payments
from grimbots.jobs.gateway import reconcile_one
from grimbots.jobs.webhook import event_job_id
from grimbots.lab.servers import wait_until
from grimbots.models import Delivery, OutboxMessage, Payment, PaymentEvent
from grimbots.queues import GATEWAY, TASKS, WEBHOOK
from payment_support import PIX_PATH, make_lead, sent_texts
from rq import Queue
from rq.job import Job
from sqlalchemy import select, text
from support import buy_callback, count, post_update


@pytest.fixture
def shop(env, bot, start_web, start_worker, tmp_path):
    """Web + one worker per queue, sharing a Prometheus directory; returns the web URL."""
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    extra = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    base_url = start_web(workers=2, extra_env=extra)
    start_worker(TASKS, GATEWAY, extra_env=extra)
    return base_url, extra


def buy(base_url, bot, update_id: int, user_id: int) -> int:
    return post_update(
        base_url, bot.id, bot.secret, buy_callback(update_id, user_id, bot.offer_id)
    ).status_code


def charged(services, telegram, user_id: int) -> Payment:
    wait_until(lambda: sent_texts(telegram, user_id, "PIX for"), what="PIX code message")
    with services.db.session() as session:
        return session.scalar(select(Payment).where(Payment.pix_copy_paste.is_not(None)))


def revenue(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("grimbots_revenue_cents_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_fifty_callbacks_and_reconciliation_pay_once_and_deliver_once(
    shop, bot, services, telegram, psp, start_worker
):
    base_url, extra = shop
    start_worker(WEBHOOK, extra_env=extra)
    assert buy(base_url, bot, 1, user_id=9001) == 200
    payment = charged(services, telegram, 9001)
    assert sent_texts(telegram, 9001, payment.pix_copy_paste)  # the code itself went out
    in_process = metrics.REVENUE_CENTS.labels("apipix")._value.get()

    # 50 identical callbacks at once, and the reconciliation job asking the PSP about the
    # same charge at the same moment (three times, from threads).
    reconciled: list[str] = []
    started = threading.Event()

    def reconcile():
        started.wait(5)
        reconciled.append(reconcile_one(services, payment.id))

    threads = [threading.Thread(target=reconcile) for _ in range(3)]
    for thread in threads:
        thread.start()
    psp.pay(txid=payment.txid, times=50, concurrent=True, notify_url=base_url + PIX_PATH)
    started.set()
    for thread in threads:
        thread.join(30)

    wait_until(lambda: len(psp.notifications()) == 50, timeout=30, what="50 callbacks")
    assert {n["status"] for n in psp.notifications()} == {200}
    wait_until(lambda: sent_texts(telegram, 9001, "access="), what="delivery message")
    wait_until(
        lambda: (
            Queue(WEBHOOK, connection=services.redis.raw).count == 0
            and count(services, PaymentEvent, outcome=None) == 0
        ),
        what="events processed",
    )
    assert len(sent_texts(telegram, 9001, "access=")) == 1
    assert len(sent_texts(telegram, 9001, "PIX for")) == 1
    with services.db.session() as session:
        assert session.get(Payment, payment.id).status == "paid"
        (event,) = session.scalars(select(PaymentEvent))
        assert event.outcome == "confirmed"
    assert count(services, Delivery) == 1
    assert count(services, OutboxMessage, kind="delivery", status="sent") == 1
    # Revenue counted once: in a worker or in this process (reconciliation), not both.
    text = httpx.get(f"{base_url}/metrics").text
    counted = revenue(text) + metrics.REVENUE_CENTS.labels("apipix")._value.get() - in_process
    assert counted == 1990


def test_double_tapped_buy_makes_one_charge_and_one_code(
    shop, bot, services, telegram, psp, start_worker
):
    base_url, extra = shop
    start_worker(TASKS, GATEWAY, extra_env=extra)  # two workers race for the same charge

    def tap(update_id):
        with httpx.Client(timeout=10) as client:
            return post_update(
                base_url, bot.id, bot.secret, buy_callback(update_id, 9002, bot.offer_id), client
            ).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(tap, range(10, 20))) == [200] * 10
    gateway = Queue(GATEWAY, connection=services.redis.raw)
    wait_until(lambda: len(gateway.finished_job_registry) == 10, timeout=30, what="10 charge jobs")
    assert len(psp.charges()) == 1
    assert count(services, Payment) == 1
    assert len(sent_texts(telegram, 9002, "PIX for")) == 1
    assert len(telegram.calls("answerCallbackQuery", status=200)) == 10


def test_charges_open_once_their_insert_is_planned_without_its_values(services, bot):
    # psycopg prepares a statement its connection has run 5 times, and PostgreSQL may then
    # plan it once for any values (a generic plan): in the lab's chaos run every charge job
    # of a long-lived gateway worker failed there, because the ON CONFLICT's partial-index
    # predicate was a parameter, which a generic plan cannot match to the index. Forced here.
    leads = [make_lead(services, bot, user_id) for user_id in range(9100, 9110)]
    with services.db.session() as session:
        session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        for lead_id in leads:
            # The second asks for the same charge: the same row comes back.
            first, again = (
                payments.open_charge(
                    session,
                    bot_id=bot.id,
                    lead_id=lead_id,
                    offer_id=bot.offer_id,
                    amount_cents=1990,
                    provider="apipix",
                )[0].id
                for _ in range(2)
            )
            assert first == again
    assert count(services, Payment) == len(leads)


def test_worker_killed_between_paid_and_delivered_delivers_once(
    shop, bot, services, telegram, psp, start_worker
):
    base_url, extra = shop
    assert buy(base_url, bot, 30, user_id=9003) == 200
    payment = charged(services, telegram, 9003)

    # The delivery call reaches Telegram (recorded on arrival) and hangs; the worker dies.
    telegram.faults(slow={"delay": 3, "count": 1})
    worker = start_worker(WEBHOOK, extra_env=extra)
    psp.pay(txid=payment.txid, notify_url=base_url + PIX_PATH, wait=True)
    wait_until(lambda: sent_texts(telegram, 9003, "access="), what="delivery in flight")
    worker.kill()
    with services.db.session() as session:
        assert session.get(Payment, payment.id).status == "paid"
        event_key = session.scalar(select(PaymentEvent.event_key))

    # RQ (abandoned job) or an operator runs the very same job again.
    queue = Queue(WEBHOOK, connection=services.redis.raw)
    job_id = event_job_id("apipix", event_key)
    queue.enqueue_job(Job.fetch(job_id, connection=services.redis.raw))
    start_worker(WEBHOOK, extra_env=extra)
    wait_until(
        lambda: Job.fetch(job_id, connection=services.redis.raw).get_status() == "finished",
        what="re-run finished",
    )
    assert len(sent_texts(telegram, 9003, "access=")) == 1
    assert count(services, Delivery) == 1


def test_crash_after_commit_before_send_is_resumed_once(
    shop, bot, services, telegram, psp, start_worker
):
    """The state a crash right after the paid commit leaves: delivery row, message pending."""
    from grimbots import payments

    base_url, extra = shop
    assert buy(base_url, bot, 40, user_id=9004) == 200
    payment = charged(services, telegram, 9004)
    psp.pay(txid=payment.txid, notify_url=base_url + PIX_PATH, wait=True)
    with services.db.session() as session:
        event_id, event_key = session.execute(select(PaymentEvent.id, PaymentEvent.event_key)).one()
    # What the killed worker had committed: the PSP's confirmation, the compare-and-set and
    # the delivery rows.
    from grimbots.jobs.webhook import confirm_with_psp

    confirm_with_psp(services, event_id)
    assert payments.apply_event(services.db, event_id).won
    assert count(services, OutboxMessage, kind="delivery", status="pending") == 1
    start_worker(WEBHOOK, extra_env=extra)  # now runs the queued job for the event
    job_id = event_job_id("apipix", event_key)
    wait_until(
        lambda: Job.fetch(job_id, connection=services.redis.raw).get_status() == "finished",
        what="job finished",
    )
    wait_until(lambda: sent_texts(telegram, 9004, "access="), what="delivery")
    assert len(sent_texts(telegram, 9004, "access=")) == 1
    assert count(services, OutboxMessage, kind="delivery", status="sent") == 1
