"""Helpers for the tests: counting rows, waiting until nothing is left to work, posting
updates, the updates Telegram sends, printing a figure. The servers, processes and
wait_until are grimbots.lab.servers'."""

from __future__ import annotations

import httpx
from grimbots.lab.audit import backlog
from grimbots.lab.servers import wait_until


def count(services, model, **filters) -> int:
    """Rows of `model` matching column == value filters."""
    from sqlalchemy import func, select

    query = select(func.count()).select_from(model)
    for name, value in filters.items():
        query = query.where(getattr(model, name) == value)
    with services.db.session() as session:
        return session.scalar(query)


def wait_drained(services, timeout: float = 15.0) -> None:
    """Wait until nothing is left to work (grimbots.lab.audit.backlog: no job queued,
    running, scheduled for a retry or dequeued, no outbox row pending): whatever a job
    was still to do has been done, so a count taken next is final."""
    wait_until(lambda: not any(backlog(services).values()), timeout, "nothing left to work")


def measure(name: str, value) -> None:
    """A figure for the log and docs/benchmarks.md (pytest -s shows it)."""
    print(f"\nMEASURE {name}={value}")


def post_update(
    base_url: str,
    bot_id: int,
    secret: str,
    update: dict | bytes,
    client: httpx.Client | None = None,
) -> httpx.Response:
    body = update if isinstance(update, bytes) else __import__("orjson").dumps(update)
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret, "Content-Type": "application/json"}
    url = f"{base_url}/webhook/telegram/{bot_id}"
    if client is not None:
        return client.post(url, content=body, headers=headers)
    return httpx.post(url, content=body, headers=headers, timeout=10)


def start_message(update_id: int, user_id: int, text: str = "/start") -> dict:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": user_id, "is_bot": False, "first_name": "Ana", "username": "ana"},
            "chat": {"id": user_id, "type": "private"},
            "date": 1700000000,
            "text": text,
        },
    }


def buy_callback(update_id: int, user_id: int, offer_id: int) -> dict:
    return {
        "update_id": update_id,
        "callback_query": {
            "id": f"cb-{update_id}",
            "from": {"id": user_id, "is_bot": False, "first_name": "Ana"},
            "message": {"message_id": 1, "chat": {"id": user_id, "type": "private"}},
            "data": f"buy:{offer_id}",
        },
    }
