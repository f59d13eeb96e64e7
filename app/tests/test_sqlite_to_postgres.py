"""The SQLite -> PostgreSQL move: a real phase-1 SQLite file, a real PostgreSQL server.

Backup (online API, integrity_check, SHA-256), copy (the app's migrations, foreign-key
order, batches, sequences), verify (counts, primary-key sets, row checksums), re-runs that
change nothing, a dry run that writes nothing, and an untouched SQLite file to roll back to.
"""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from grimbots import sqlite_to_postgres as move
from grimbots.db import make_engine
from grimbots.lab.servers import ADMIN_TOKEN, GRIMBOTS
from grimbots.migrate import current_revision, head_revision, upgrade
from grimbots.models import (
    Bot,
    Delivery,
    InboundUpdate,
    Lead,
    Offer,
    OutboxMessage,
    Payment,
    PaymentEvent,
)
from sqlalchemy import delete, func, insert, select, text, update

BIG_TELEGRAM_ID = 7_000_000_000  # above 2**31: a BigInteger on PostgreSQL


def fill(url: str, bots: int = 3, leads_per_bot: int = 40, first_id: int = 1) -> None:
    """Rows in every table, with the awkward values: NULLs, unicode, quotes, big ids,
    microsecond times, booleans, UUIDs, rows that point at others."""
    engine = make_engine(url)
    now = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            for b in range(first_id, first_id + bots):
                conn.execute(
                    insert(Bot).values(
                        id=b,
                        name=f"bot-{b}",
                        token=f"{b}:tok'en",
                        webhook_secret=f"s{b}",
                        welcome_text='Olá, "bem-vindo"! 🎉' if b % 2 else "",
                    )
                )
                conn.execute(
                    insert(Offer).values(
                        id=b,
                        bot_id=b,
                        name=f"Curso {b}",
                        price_cents=990 + b,
                        access_link=f"https://t.me/+{b}",
                    )
                )
                for n in range(leads_per_bot):
                    lead_id = b * 1000 + n
                    conn.execute(
                        insert(Lead).values(
                            id=lead_id,
                            bot_id=b,
                            telegram_user_id=BIG_TELEGRAM_ID + lead_id,
                            chat_id=BIG_TELEGRAM_ID + lead_id,
                            first_name=None if n % 3 == 0 else f"Zé {n}",
                            username=None,
                            blocked=n % 7 == 0,
                            created_at=now + timedelta(microseconds=n),
                        )
                    )
                    conn.execute(
                        insert(InboundUpdate).values(
                            id=lead_id,
                            bot_id=b,
                            update_id=lead_id,
                            kind="start",
                            lead_id=lead_id,
                        )
                    )
                    conn.execute(
                        insert(OutboxMessage).values(
                            id=lead_id,
                            idempotency_key=f"tg:{b}:{lead_id}:welcome",
                            bot_id=b,
                            lead_id=lead_id,
                            chat_id=BIG_TELEGRAM_ID + lead_id,
                            kind="welcome",
                            method="sendMessage",
                            payload='{"text": "oi"}',
                            status="sent" if n % 2 else "pending",
                            sent_at=now if n % 2 else None,
                        )
                    )
                    if n % 5 == 0:
                        pid = uuid.uuid4()
                        conn.execute(
                            insert(Payment).values(
                                id=pid,
                                bot_id=b,
                                lead_id=lead_id,
                                offer_id=b,
                                amount_cents=990,
                                status="paid",
                                provider="apipix",
                                txid="gb" + pid.hex,
                                paid_at=now,
                            )
                        )
                        conn.execute(
                            insert(PaymentEvent).values(
                                id=lead_id,
                                provider="apipix",
                                event_key=f"E{lead_id}",
                                source="webhook",
                                txid="gb" + pid.hex,
                                payment_id=pid,
                                amount_cents=990,
                                raw_body="{}",
                                outcome="confirmed",
                            )
                        )
                        conn.execute(
                            insert(Delivery).values(
                                id=lead_id,
                                payment_id=pid,
                                access_token=f"t{lead_id}",
                                outbox_key=f"k{lead_id}",
                                outbox_message_id=lead_id,
                            )
                        )
    finally:
        engine.dispose()


@pytest.fixture
def live(tmp_path) -> Path:
    """A phase-1 SQLite file: the app's migrations, then rows, in WAL mode like the app's."""
    path = tmp_path / "grimbots.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    fill(url)
    return path


@pytest.fixture
def empty_pg(postgres):
    """A PostgreSQL database with no schema at all (the move creates it)."""
    name = f"move_{uuid.uuid4().hex[:10]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


def count(url: str, model) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(model))
    finally:
        engine.dispose()


def test_backup_is_online_checked_and_checksummed(live, tmp_path):
    before = move.sha256_of(live)
    taken = move.backup(live, tmp_path / "backups")
    assert taken.integrity == "ok"
    assert taken.sha256 == move.sha256_of(taken.path)
    assert Path(f"{taken.path}.sha256").read_text().split() == [taken.sha256, taken.path.name]
    assert taken.rows["leads"] == 120 and taken.rows["deliveries"] == 24
    assert taken.path.stat().st_mode & 0o777 == 0o600
    assert move.sha256_of(live) == before  # the live file is only read
    # Self-contained: no -wal beside it, and reading it does not change it.
    assert not Path(f"{taken.path}-wal").exists()
    assert move.latest_backup(tmp_path / "backups") == taken.path


def test_backup_refuses_a_corrupt_file(tmp_path):
    bad = tmp_path / "bad.db"
    conn = sqlite3.connect(bad)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(str(i) * 500,) for i in range(2000)])
    conn.commit()
    conn.close()
    data = bytearray(bad.read_bytes())
    data[4096 * 3 : 4096 * 3 + 200] = b"\xff" * 200  # scribble over a page of the table
    bad.write_bytes(bytes(data))
    with pytest.raises((move.MoveError, sqlite3.DatabaseError)):
        move.backup(bad, tmp_path / "backups")


def test_copy_creates_the_schema_copies_every_row_and_verifies(live, tmp_path, empty_pg):
    snapshot = move.backup(live, tmp_path / "b").path
    report = move.copy(snapshot, empty_pg, batch_size=7)  # many small batches
    assert report.schema_before is None and report.schema_after == head_revision()
    assert current_revision(empty_pg) == head_revision()
    assert report.tables["leads"] == {"source": 120, "present": 0, "copied": 120, "clashed": 0}
    assert [name for name in report.tables] == [t.name for t in move.tables()]
    checked = move.verify(snapshot, empty_pg)
    assert checked.ok, checked.as_dict()
    assert checked.tables["payments"].source_checksum == checked.tables["payments"].target_checksum
    assert count(empty_pg, PaymentEvent) == 24

    # Sequences were moved past the copied ids: the next row gets a fresh id.
    engine = make_engine(empty_pg)
    try:
        with engine.begin() as conn:
            new_id = conn.execute(
                insert(Bot).values(name="after", token="1:x", webhook_secret="s").returning(Bot.id)
            ).scalar()
            top_lead = conn.execute(
                insert(Lead).values(bot_id=1, telegram_user_id=1, chat_id=1).returning(Lead.id)
            ).scalar()
    finally:
        engine.dispose()
    assert new_id == 4 and top_lead == 3040


def test_a_second_run_verifies_and_changes_nothing(live, tmp_path, empty_pg):
    snapshot = move.backup(live, tmp_path / "b").path
    assert move.copy(snapshot, empty_pg).changed
    again = move.copy(snapshot, empty_pg)
    assert not again.changed
    assert all(t["copied"] == 0 and t["present"] == t["source"] for t in again.tables.values())
    assert all(s["before"] == s["after"] for s in again.sequences.values())
    assert move.verify(snapshot, empty_pg).ok


def test_dry_run_says_what_it_would_do_and_writes_nothing(live, tmp_path, empty_pg):
    snapshot = move.backup(live, tmp_path / "b").path
    report = move.copy(snapshot, empty_pg, dry_run=True)
    assert report.dry_run and not report.changed
    assert report.schema_before is None and report.schema_after is None
    assert report.tables["outbox_messages"]["would_copy"] == 120
    assert current_revision(empty_pg) is None  # no schema, no alembic_version
    # On a database with the schema and part of the rows: what is left to copy.
    move.copy(snapshot, empty_pg)
    engine = make_engine(empty_pg)
    with engine.begin() as conn:
        conn.execute(delete(Delivery).where(Delivery.id < 2000))
    engine.dispose()
    partial = move.copy(snapshot, empty_pg, dry_run=True)
    assert partial.tables["deliveries"]["would_copy"] == 8
    assert count(empty_pg, Delivery) == 16


def test_verify_names_missing_extra_and_changed_rows(live, tmp_path, database_url):
    snapshot = move.backup(live, tmp_path / "b").path
    move.copy(snapshot, database_url)  # a database with the schema already (the template)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(delete(Delivery).where(Delivery.id == 1000))
            conn.execute(update(Lead).where(Lead.id == 2005).values(first_name="tampered"))
            conn.execute(insert(Bot).values(id=99, name="extra", token="9:x", webhook_secret="s"))
    finally:
        engine.dispose()
    exact = move.verify(snapshot, database_url)
    assert not exact.ok
    report = exact.as_dict()["tables"]
    assert report["deliveries"]["missing_keys"] == ["1000"]
    assert report["leads"]["different_keys"] == ["2005"] and report["leads"]["missing"] == 0
    assert report["bots"]["extra_keys"] == ["99"]
    assert report["offers"]["ok"]
    # After the switch PostgreSQL moves on: extra and updated rows are fine, missing ones not.
    contained = move.verify(snapshot, database_url, mode="contained")
    assert not contained.ok
    assert [n for n, t in contained.tables.items() if not t.ok("contained")] == ["deliveries"]


def test_rows_written_after_the_first_copy_keep_their_ids(live, tmp_path, empty_pg):
    """The SQLite-era web may record a few more rows (PSP callbacks) while the app is
    switched over; a second backup and copy carries them, ids kept, clear of the rows the
    PostgreSQL-era app writes meanwhile (the id margin)."""
    first = move.backup(live, tmp_path / "b").path
    report = move.copy(first, empty_pg, id_margin=1000)
    assert report.sequences["bots"]["after"] == 3 + 1000
    fill(f"sqlite:///{live}", bots=1, leads_per_bot=5, first_id=4)  # the SQLite-era rows
    engine = make_engine(empty_pg)
    try:
        with engine.begin() as conn:  # the PostgreSQL-era app's first row
            born = conn.execute(
                insert(Bot)
                .values(name="pg-born", token="1:x", webhook_secret="s")
                .returning(Bot.id)
            ).scalar()
    finally:
        engine.dispose()
    assert born == 1004
    second = move.backup(live, tmp_path / "b").path
    catch_up = move.copy(second, empty_pg, id_margin=1000)
    assert catch_up.tables["bots"]["copied"] == 1 and catch_up.tables["leads"]["copied"] == 5
    assert catch_up.sequences["bots"]["after"] == 1004  # never moved down
    assert move.verify(second, empty_pg, mode="contained").ok
    assert not move.verify(second, empty_pg).ok  # exact: the pg-born bot is extra


def test_copy_refuses_a_sqlite_schema_behind_the_package(tmp_path, empty_pg):
    old = tmp_path / "old.db"
    upgrade(f"sqlite:///{old}", revision="0001")
    snapshot = move.backup(old, tmp_path / "b").path
    with pytest.raises(move.MoveError, match="grimbots db upgrade"):
        move.copy(snapshot, empty_pg)


def test_a_changed_backup_is_not_used(live, tmp_path):
    taken = move.backup(live, tmp_path / "b").path
    with open(taken, "r+b") as handle:
        handle.seek(200)
        handle.write(b"x")
    with pytest.raises(move.MoveError, match="no longer matches"):
        move.latest_backup(tmp_path / "b")


def cli(env, *args):
    return subprocess.run(
        [GRIMBOTS, "sqlite-to-postgres", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_moves_and_rolls_back(live, tmp_path, empty_pg, redis_url):
    """The commands the playbook runs: backup and copy with the app still on SQLite, verify
    exact; then the rollback: the SQLite file and its URL work as before."""
    before = move.sha256_of(live)
    env = {
        "PATH": "/usr/bin:/bin",
        "GRIMBOTS_DATABASE_URL": f"sqlite:///{live}",
        "GRIMBOTS_REDIS_URL": redis_url,
        "GRIMBOTS_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    url_file = tmp_path / "target.url"
    url_file.write_text(empty_pg.replace("postgresql+psycopg://", "postgresql://") + "\n")
    backups = str(tmp_path / "backups")

    done = cli(env, "backup", "--backup-dir", backups)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["integrity"] == "ok"
    dry = cli(env, "copy", "--backup-dir", backups, "--target-url-file", str(url_file), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert orjson.loads(dry.stdout)["tables"]["bots"]["would_copy"] == 3
    copied = cli(env, "copy", "--backup-dir", backups, "--target-url-file", str(url_file))
    assert copied.returncode == 0, copied.stderr
    assert orjson.loads(copied.stdout)["changed"] is True
    checked = cli(env, "verify", "--backup-dir", backups, "--target-url-file", str(url_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert orjson.loads(checked.stdout)["ok"] is True

    # A failed verify exits 1 and names the table.
    engine = make_engine(empty_pg)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM deliveries WHERE id = 1005"))
    engine.dispose()
    failed = cli(env, "verify", "--backup-dir", backups, "--target-url-file", str(url_file))
    assert failed.returncode == 1
    assert orjson.loads(failed.stdout)["tables"]["deliveries"]["missing_keys"] == ["1005"]

    # Rollback: nothing was written to the SQLite file; the app reads it as before.
    assert move.sha256_of(live) == before
    listed = subprocess.run(
        [GRIMBOTS, "bots", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert [b["name"] for b in orjson.loads(listed.stdout)] == ["bot-1", "bot-2", "bot-3"]


def test_replace_refreshes_what_an_earlier_attempt_left(live, tmp_path, empty_pg):
    """A move stopped before the switch leaves rows in PostgreSQL that SQLite has changed or
    deleted since; the next attempt's copy --replace starts from the new backup."""
    move.copy(move.backup(live, tmp_path / "b").path, empty_pg)
    engine = make_engine(f"sqlite:///{live}")
    with engine.begin() as conn:
        conn.execute(update(OutboxMessage).where(OutboxMessage.id == 1001).values(status="sent"))
        conn.execute(delete(Delivery).where(Delivery.id == 2010))
    engine.dispose()
    newer = move.backup(live, tmp_path / "b").path
    assert not move.verify(newer, empty_pg).ok  # the plain copy would keep the stale rows
    report = move.copy(newer, empty_pg, replace=True)
    assert (
        report.tables["deliveries"]["replaced"] == 24
        and report.tables["deliveries"]["copied"] == 23
    )
    assert move.verify(newer, empty_pg).ok


def test_replace_refuses_a_live_postgresql(live, tmp_path, empty_pg):
    snapshot = move.backup(live, tmp_path / "b").path
    move.copy(snapshot, empty_pg)
    engine = make_engine(empty_pg)
    with engine.begin() as conn:  # a row the app wrote to PostgreSQL after a switch
        conn.execute(insert(Bot).values(name="live", token="1:x", webhook_secret="s"))
    engine.dispose()
    with pytest.raises(move.MoveError, match="refusing to replace"):
        move.copy(snapshot, empty_pg, replace=True)
    assert count(empty_pg, Bot) == 4  # nothing removed


def test_a_row_recorded_again_after_the_switch_is_not_missing(live, tmp_path, empty_pg):
    """A row the SQLite-era web recorded during the switch may reach PostgreSQL again on
    its own, under a new id (a PSP callback re-sent, or settled by the reconcile): the
    catch-up copy leaves it out on the unique key, and the contained check finds it there,
    reported, not missing."""
    first = move.backup(live, tmp_path / "b").path
    move.copy(first, empty_pg, id_margin=1000)
    for url, row in ((f"sqlite:///{live}", {"id": 4}), (empty_pg, {})):
        engine = make_engine(url)  # SQLite-era bot 4, then the same bot again on PostgreSQL
        try:
            with engine.begin() as conn:
                conn.execute(
                    insert(Bot).values(name="twice", token="1:x", webhook_secret="s", **row)
                )
        finally:
            engine.dispose()
    second = move.backup(live, tmp_path / "b").path
    assert move.copy(second, empty_pg, id_margin=1000).tables["bots"]["clashed"] == 1
    contained = move.verify(second, empty_pg, mode="contained")
    assert contained.ok, contained.as_dict()
    bots = contained.tables["bots"].as_dict("contained")
    assert (bots["missing"], bots["elsewhere"], bots["elsewhere_keys"]) == (0, 1, ["4"])
