"""The outbox: every outgoing Bot API call is a row before it is a request.

Exactly-once rules, enforced by the database:
- a row is created with INSERT ... ON CONFLICT DO NOTHING on a unique idempotency key, so
  re-running the same job creates nothing new;
- only the caller whose UPDATE moves it pending -> sending (a compare-and-set) may send;
- a row left in `sending` (worker killed during the call) is never sent again;
- a row left in `pending` by a job that died for good is sent by the periodic reconcile
  (grimbots.jobs.messages.requeue_orphans), through the same compare-and-set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, func, select, update

from grimbots.db import Database, insert_for
from grimbots.models import OutboxMessage
from grimbots.statuses import OutboxStatus


@dataclass(frozen=True)
class Claimed:
    id: int
    key: str
    bot_id: int
    lead_id: int | None
    chat_id: int
    kind: str
    method: str
    payload: dict[str, Any]
    attempts: int


def idempotency_key(bot_id: int, chat_id: int, update_id: int, kind: str) -> str:
    return f"tg:{bot_id}:{chat_id}:{update_id}:{kind}"


def add(
    session,
    *,
    key: str,
    bot_id: int,
    lead_id: int | None,
    chat_id: int,
    kind: str,
    method: str,
    payload: dict[str, Any],
) -> int:
    """Create the row unless it exists; return its id either way."""
    insert = insert_for(session)
    session.execute(
        insert(OutboxMessage)
        .values(
            idempotency_key=key,
            bot_id=bot_id,
            lead_id=lead_id,
            chat_id=chat_id,
            kind=kind,
            method=method,
            payload=orjson.dumps(payload).decode(),
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )
    return session.scalar(select(OutboxMessage.id).where(OutboxMessage.idempotency_key == key))


def add_many(session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """add() for several rows in one statement (plus one more if some existed already).

    Each row has add()'s keyword arguments; returns {key: id} for every row. Rows are
    inserted in key order, so two transactions adding overlapping keys lock them in the
    same order and cannot deadlock.
    """
    if not rows:
        return {}
    unique = {row["key"]: row for row in rows}
    values = [
        {
            "idempotency_key": key,
            "bot_id": row["bot_id"],
            "lead_id": row["lead_id"],
            "chat_id": row["chat_id"],
            "kind": row["kind"],
            "method": row["method"],
            "payload": orjson.dumps(row["payload"]).decode(),
        }
        for key, row in sorted(unique.items())
    ]
    ids = dict(session.connection().execute(_add_many_statement(insert_for(session)), values).all())
    missing = [key for key in unique if key not in ids]
    if missing:  # made by an earlier run of the same work
        ids.update(
            session.execute(
                select(OutboxMessage.idempotency_key, OutboxMessage.id).where(
                    OutboxMessage.idempotency_key.in_(missing)
                )
            ).all()
        )
    return ids


@functools.cache
def _add_many_statement(insert):
    table = OutboxMessage.__table__
    return (
        insert(table)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(table.c.idempotency_key, table.c.id)
    )


def add_text(session, *, key: str, lead, kind: str, text: str) -> int:
    """add() for a plain sendMessage to a lead (payment messages, notices)."""
    return add(
        session,
        key=key,
        bot_id=lead.bot_id,
        lead_id=lead.id,
        chat_id=lead.chat_id,
        kind=kind,
        method="sendMessage",
        payload={"chat_id": lead.chat_id, "text": text},
    )


def claim(db: Database, outbox_id: int) -> Claimed | None:
    """Move the row pending -> sending; None if someone else did or it is not pending.

    Committed before the network call, so a crash during the call leaves `sending`.
    """
    with db.session() as session:
        claimed = claim_in(session, [outbox_id])
    return claimed[0] if claimed else None


def claim_in(session, outbox_ids: list[int]) -> list[Claimed]:
    """claim() for several rows, in the caller's transaction: the caller must commit before
    making any of the calls (process_updates commits them with the rows it created)."""
    if not outbox_ids:
        return []
    table = OutboxMessage.__table__
    c = table.c
    rows = (
        session.connection()
        .execute(
            update(table)
            .where(c.id.in_(sorted(outbox_ids)), c.status == OutboxStatus.PENDING)
            .values(status=OutboxStatus.SENDING, attempts=c.attempts + 1, updated_at=func.now())
            .returning(
                c.id,
                c.idempotency_key,
                c.bot_id,
                c.lead_id,
                c.chat_id,
                c.kind,
                c.method,
                c.payload,
                c.attempts,
            )
        )
        .all()
    )
    return [
        Claimed(
            id=row.id,
            key=row.idempotency_key,
            bot_id=row.bot_id,
            lead_id=row.lead_id,
            chat_id=row.chat_id,
            kind=row.kind,
            method=row.method,
            payload=orjson.loads(row.payload),
            attempts=row.attempts,
        )
        for row in rows
    ]


def _finish(db: Database, outbox_id: int, **values: Any) -> bool:
    # Only from `sending`: the transition belongs to whoever claimed the row.
    with db.session() as session:
        result = session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.SENDING)
            .values(updated_at=func.now(), **values)
        )
        return result.rowcount == 1


def mark_sent(db: Database, outbox_id: int, telegram_message_id: int | None) -> bool:
    return _finish(
        db,
        outbox_id,
        status=OutboxStatus.SENT,
        telegram_message_id=telegram_message_id,
        sent_at=func.now(),
        error=None,
    )


def mark_sent_many(db: Database, sent: list[tuple[int, int | None]]) -> None:
    """mark_sent() for several (outbox id, Telegram message id) pairs in one transaction."""
    if not sent:
        return
    with db.session() as session:
        table = OutboxMessage.__table__
        session.connection().execute(
            update(table)
            .where(table.c.id == bindparam("row_id"), table.c.status == OutboxStatus.SENDING)
            .values(
                status=OutboxStatus.SENT,
                telegram_message_id=bindparam("message_id"),
                sent_at=func.now(),
                updated_at=func.now(),
                error=None,
            ),
            [{"row_id": row_id, "message_id": message_id} for row_id, message_id in sorted(sent)],
        )


def statuses_of(db: Database, outbox_ids: list[int]) -> dict[int, str]:
    if not outbox_ids:
        return {}
    with db.session() as session:
        return dict(
            session.execute(
                select(OutboxMessage.id, OutboxMessage.status).where(
                    OutboxMessage.id.in_(outbox_ids)
                )
            ).all()
        )


def mark_failed(db: Database, outbox_id: int, error: str) -> bool:
    return _finish(db, outbox_id, status=OutboxStatus.FAILED, error=error[:1000])


# The reason of a row whose call may have reached Telegram (a timeout after the request went
# out): it is never re-sent, and whether it arrived is unknown, as for a row a killed worker
# left in `sending` (the load test's audit settles both against the stand-in).
OUTCOME_UNKNOWN = "outcome unknown, not re-sent"


def mark_outcome_unknown(db: Database, outbox_id: int, detail: str) -> bool:
    return mark_failed(db, outbox_id, f"{OUTCOME_UNKNOWN}: {detail}")


def failed_with_unknown_outcome(status: str, error: str | None) -> bool:
    return status == OutboxStatus.FAILED and (error or "").startswith(OUTCOME_UNKNOWN)


def release(db: Database, outbox_id: int, error: str) -> bool:
    """Back to pending after a call known not to have been delivered (429, 5xx, refused)."""
    return _finish(db, outbox_id, status=OutboxStatus.PENDING, error=error[:1000])


def orphans(db: Database, older_than: timedelta, limit: int) -> list[tuple[int, int]]:
    """(id, attempts) of rows left pending for `older_than`: the job that made or
    re-scheduled them may be gone (grimbots.jobs.messages.requeue_orphans)."""
    cutoff = datetime.now(UTC) - older_than
    with db.session() as session:
        return [
            (row.id, row.attempts)
            for row in session.execute(
                select(OutboxMessage.id, OutboxMessage.attempts)
                .where(
                    OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.updated_at < cutoff
                )
                .order_by(OutboxMessage.id)
                .limit(limit)
            )
        ]


def status_of(db: Database, outbox_id: int) -> str | None:
    with db.session() as session:
        return session.scalar(select(OutboxMessage.status).where(OutboxMessage.id == outbox_id))
