"""Per-process cache of bot webhook secrets, so the webhook does no database work.

Why a per-process dict and not Redis: the webhook's budget is one Redis round trip, and
that one is spent on dedupe + enqueue. Secrets change rarely (`bots add` with a new
secret, then `set-webhook`), so each process keeps them for POSITIVE_TTL seconds; a
rotated secret is honoured within that time (until then Telegram gets 403 and retries).
Unknown ids are remembered for NEGATIVE_TTL seconds so a flood of bogus ids costs one
query per id per few seconds, not one per request, and a new bot works almost at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select

from grimbots.db import Database
from grimbots.models import Bot

POSITIVE_TTL = 30.0
NEGATIVE_TTL = 5.0
MAX_ENTRIES = 10_000  # bounds memory if someone walks through every integer id


class BotSecretCache:
    def __init__(
        self, load: Callable[[int], str | None], clock: Callable[[], float] = time.monotonic
    ):
        self._load = load
        self._clock = clock
        # bot_id -> (expires_at, secret or None). Plain dict reads/writes are atomic in
        # CPython, so gthread workers share it without a lock; a race costs one extra query.
        self._entries: dict[int, tuple[float, str | None]] = {}

    def get(self, bot_id: int) -> str | None:
        """The bot's webhook secret, or None for an unknown bot. Raises if the DB is down."""
        now = self._clock()
        entry = self._entries.get(bot_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        secret = self._load(bot_id)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        ttl = POSITIVE_TTL if secret is not None else NEGATIVE_TTL
        self._entries[bot_id] = (now + ttl, secret)
        return secret


def database_loader(db: Database) -> Callable[[int], str | None]:
    def load(bot_id: int) -> str | None:
        with db.session() as session:
            return session.scalar(select(Bot.webhook_secret).where(Bot.id == bot_id))

    return load
