"""One set of Alembic migrations for SQLite and PostgreSQL, matching the models."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from grimbots.db import make_engine
from grimbots.lab.servers import GRIMBOTS
from grimbots.migrate import current_revision, head_revision, upgrade
from grimbots.models import Base, Bot, Delivery, Lead, Offer, OutboxMessage, Payment, PaymentEvent
from grimbots.statuses import OutboxStatus, PaymentStatus
from sqlalchemy import insert, inspect, select, update
from sqlalchemy.exc import IntegrityError

EXPECTED_TABLES = {
    "bots",
    "offers",
    "leads",
    "inbound_updates",
    "outbox_messages",
    "payments",
    "payment_events",
    "deliveries",
}
# An outbox row of bot 1 (status: the column's default).
OUTBOX_ROW = {
    "idempotency_key": "k",
    "bot_id": 1,
    "chat_id": 1,
    "kind": "k",
    "method": "sendMessage",
    "payload": "{}",
}


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path, postgres):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/fresh.db"
    else:
        name = "fresh_migrations"
        postgres.drop_database(name)
        yield postgres.create_database(name)
        postgres.drop_database(name)


def test_upgrade_fresh_database_matches_models(fresh_url):
    upgrade(fresh_url)
    assert current_revision(fresh_url) == head_revision()
    engine = make_engine(fresh_url)
    try:
        assert set(inspect(engine).get_table_names()) >= EXPECTED_TABLES
    finally:
        engine.dispose()
    assert _diff(fresh_url) == []


def test_upgrade_is_repeatable(fresh_url):
    upgrade(fresh_url)
    upgrade(fresh_url)  # a second run is a no-op, as Ansible will do on every deploy
    assert current_revision(fresh_url) == head_revision()


def test_constraints_live_in_the_database(fresh_url):
    upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Bot).values(id=1, name="b", token="1:t", webhook_secret="s"))
        bad_rows = [
            (Offer, {"bot_id": 1, "name": "free", "price_cents": 0, "access_link": "x"}),
            (
                Offer,
                {
                    "bot_id": 1,
                    "name": "usd",
                    "price_cents": 5,
                    "currency": "USD",
                    "access_link": "x",
                },
            ),
            (Offer, {"bot_id": 999, "name": "orphan", "price_cents": 5, "access_link": "x"}),
            (OutboxMessage, {**OUTBOX_ROW, "status": "lost"}),
        ]
        for model, values in bad_rows:
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(insert(model).values(**values))
        with engine.begin() as conn:
            conn.execute(insert(OutboxMessage).values(**OUTBOX_ROW))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(OutboxMessage).values(**OUTBOX_ROW))
    finally:
        engine.dispose()


def test_cli_upgrade_from_any_directory(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    result = subprocess.run(
        [GRIMBOTS, "db", "upgrade"],
        env={
            "PATH": "/usr/bin:/bin",
            "GRIMBOTS_DATABASE_URL": url,
            "GRIMBOTS_REDIS_URL": "redis://127.0.0.1:1/0",
            "GRIMBOTS_ADMIN_TOKEN": "x" * 32,
        },
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(url) == head_revision()


def bot_lead_offer(conn) -> None:
    """Bot 1 with lead 1 and offer 1, the parents of the payment rows below."""
    conn.execute(insert(Bot).values(id=1, name="b", token="1:t", webhook_secret="s"))
    conn.execute(insert(Lead).values(id=1, bot_id=1, telegram_user_id=1, chat_id=1))
    conn.execute(insert(Offer).values(id=1, bot_id=1, name="o", price_cents=100, access_link="x"))


def payment(status: str = "pending", **values) -> dict:
    """A payment of lead 1 for offer 1 with its own id and txid."""
    pid = uuid.uuid4()
    row = {"id": pid, "bot_id": 1, "lead_id": 1, "offer_id": 1, "amount_cents": 100}
    return row | {"provider": "apipix", "txid": "gb" + pid.hex, "status": status} | values


def test_every_status_of_the_code_is_allowed_by_the_migrations(fresh_url):
    """The migrations keep their own status literals and compare_metadata does not compare
    CHECK constraints: a status added to grimbots.statuses alone fails here."""
    upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        with engine.begin() as conn:
            bot_lead_offer(conn)
            for status in OutboxStatus.ALL:
                conn.execute(
                    insert(OutboxMessage).values(
                        {**OUTBOX_ROW, "idempotency_key": status, "status": status}
                    )
                )
            for status in PaymentStatus.ALL:
                conn.execute(insert(Payment).values(**payment(status)))
        with engine.connect() as conn:
            assert sorted(conn.scalars(select(OutboxMessage.status))) == sorted(OutboxStatus.ALL)
            assert sorted(conn.scalars(select(Payment.status))) == sorted(PaymentStatus.ALL)
    finally:
        engine.dispose()


def test_payment_constraints_live_in_the_database(fresh_url):
    upgrade(fresh_url)
    engine = make_engine(fresh_url)

    def refused(model, values) -> None:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(model).values(**values))

    try:
        first = payment()
        with engine.begin() as conn:
            bot_lead_offer(conn)
            conn.execute(insert(Payment).values(**first))
        refused(Payment, payment())  # a second pending charge for the same lead and offer
        refused(Payment, payment("refunded"))
        refused(Payment, payment("paid", amount_cents=0))
        refused(Payment, payment("paid", txid=first["txid"]))
        with engine.begin() as conn:  # once it is paid, a new pending one is allowed
            conn.execute(update(Payment).where(Payment.id == first["id"]).values(status="paid"))
            conn.execute(insert(Payment).values(**payment()))
            conn.execute(insert(Payment).values(**payment("expired")))
            conn.execute(insert(Payment).values(**payment("expired")))

        event = {"provider": "apipix", "event_key": "E1", "source": "webhook", "amount_cents": 1}
        with engine.begin() as conn:
            conn.execute(insert(PaymentEvent).values(**event, raw_body="{}"))
        refused(PaymentEvent, event | {"raw_body": "{}"})

        delivery = {"payment_id": first["id"], "access_token": "t1", "outbox_key": "k1"}
        with engine.begin() as conn:
            conn.execute(insert(Delivery).values(**delivery))
        refused(Delivery, delivery | {"access_token": "t2", "outbox_key": "k2"})
    finally:
        engine.dispose()
