"""/metrics reports the state of the queues, the outbox and the payments at each scrape."""

from __future__ import annotations

import time
from datetime import timedelta

from grimbots import outbox
from grimbots.lab.servers import free_port, wait_until
from grimbots.queues import ALL_QUEUES, GATEWAY, TASKS, get_queue
from grimbots.settings import load_settings
from grimbots.web import create_wsgi_app
from payment_support import make_lead, pending_payment
from test_metrics import sample
from werkzeug.test import Client


def scrape(settings) -> str:
    response = Client(create_wsgi_app(settings)).get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def gauge(text: str, name: str) -> float | None:
    """The value of a series without labels, None when absent."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def test_health_queues_and_workers(settings, start_worker, redis_client):
    text = scrape(settings)
    assert sample(text, "grimbots_health_status", status="degraded") == 1
    assert sample(text, "grimbots_health_status", status="healthy") == 0
    assert all(sample(text, "grimbots_queue_workers", queue=q) == 0 for q in ALL_QUEUES)

    start_worker(TASKS, GATEWAY)
    queue = get_queue("webhook", redis_client)
    for n in range(3):
        queue.enqueue("grimbots.jobs.webhook.process_payment_event", n, job_id=f"collector-{n}")
    queue.enqueue_in(timedelta(hours=1), "grimbots.jobs.webhook.process_payment_event", 9)

    text = scrape(settings)
    assert sample(text, "grimbots_queue_workers", queue=TASKS) == 1
    assert sample(text, "grimbots_queue_workers", queue=GATEWAY) == 1
    assert sample(text, "grimbots_queue_workers", queue="webhook") == 0
    assert sample(text, "grimbots_queue_jobs", queue="webhook", state="queued") == 3
    assert sample(text, "grimbots_queue_jobs", queue="webhook", state="scheduled") == 1
    for state in ("started", "deferred", "failed"):
        assert f'grimbots_queue_jobs{{queue="webhook",state="{state}"}} 0.0' in text


def test_failed_jobs_are_counted(settings, start_worker, redis_client):
    # A job that cannot even be imported fails at once and, without retries, stays failed.
    get_queue(GATEWAY, redis_client).enqueue("grimbots.no_such_module.job")
    start_worker(GATEWAY)
    wait_until(
        lambda: sample(scrape(settings), "grimbots_queue_jobs", queue=GATEWAY, state="failed") >= 1,
        timeout=20,
        what="the failed job in the failed registry",
        interval=0.2,
    )


def test_outbox_backlog_and_pending_payments(settings, services, bot):
    text = scrape(settings)
    assert sample(text, "grimbots_outbox_messages", status="pending") == 0
    assert "grimbots_outbox_oldest_message_timestamp_seconds{" not in text
    assert gauge(text, "grimbots_payments_pending") == 0
    assert gauge(text, "grimbots_payments_pending_oldest_timestamp_seconds") is None

    before = time.time()
    lead_id = make_lead(services, bot, 777)
    with services.db.session() as session:
        for n in range(2):
            outbox.add_text(
                session, key=f"collector:{n}", lead=_lead(session, lead_id), kind="test", text="hi"
            )
    pending_payment(services, bot, 778)

    text = scrape(settings)
    assert sample(text, "grimbots_outbox_messages", status="pending") == 2
    assert sample(text, "grimbots_outbox_messages", status="sending") == 0
    oldest = sample(text, "grimbots_outbox_oldest_message_timestamp_seconds", status="pending")
    assert before - 5 < oldest < time.time() + 5
    assert gauge(text, "grimbots_payments_pending") == 1
    paid_oldest = gauge(text, "grimbots_payments_pending_oldest_timestamp_seconds")
    assert paid_oldest is not None and before - 5 < paid_oldest < time.time() + 5


def test_redis_down_still_answers_with_the_health_status(env):
    closed = free_port()
    settings = load_settings(env | {"GRIMBOTS_REDIS_URL": f"redis://127.0.0.1:{closed}/0"})
    started = time.monotonic()
    text = scrape(settings)
    assert time.monotonic() - started < 5, "a scrape must stay fast when Redis is down"
    assert sample(text, "grimbots_health_status", status="unhealthy") == 1
    assert "grimbots_queue_workers{" not in text
    # The database still answers: its figures are still there.
    assert gauge(text, "grimbots_payments_pending") == 0


def test_database_down_leaves_out_its_figures(env):
    closed = free_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed}/x"
    text = scrape(load_settings(env | {"GRIMBOTS_DATABASE_URL": url}))
    assert sample(text, "grimbots_health_status", status="unhealthy") == 1
    assert gauge(text, "grimbots_payments_pending") is None
    assert "grimbots_queue_workers{" in text


def _lead(session, lead_id):
    from grimbots.models import Lead

    return session.get(Lead, lead_id)
