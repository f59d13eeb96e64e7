"""Per-process cache of bot webhook secrets, so the webhook does no database work.

Why a per-process dict and not Redis: the webhook's budget is one Redis round trip, and
that one is spent on dedupe + enqueue. Secrets change rarely (`bots add` with a new
secret, then `set-webhook`), so each process keeps them for POSITIVE_TTL seconds; a
rotated secret is honoured within that time (until then Telegram gets 403 and retries).
Unknown ids are remembered for NEGATIVE_TTL seconds so a flood of bogus ids costs one
query per id per few seconds, not one per request, and a new bot works almost at once.
Known and unknown ids live apart: walking through every integer id fills (and clears)
only the bounded unknown side, never evicting the real bots.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select

from grimbots.db import Database
from grimbots.models import Bot

POSITIVE_TTL = 30.0
NEGATIVE_TTL = 5.0
MAX_UNKNOWN = 10_000  # bounds memory if someone walks through every integer id


class BotSecretCache:
    def __init__(
        self, load: Callable[[int], str | None], clock: Callable[[], float] = time.monotonic
    ):
        self._load = load
        self._clock = clock
        # bot_id -> (expires_at, secret) and bot_id -> expires_at. Plain dict reads/writes
        # are atomic in CPython, so workers share them without a lock; a race costs a query.
        self._known: dict[int, tuple[float, str]] = {}
        self._unknown: dict[int, float] = {}

    def get(self, bot_id: int) -> str | None:
        """The bot's webhook secret, or None for an unknown bot. Raises if the DB is down."""
        now = self._clock()
        known = self._known.get(bot_id)
        if known is not None and known[0] > now:
            return known[1]
        if self._unknown.get(bot_id, 0.0) > now:
            return None
        secret = self._load(bot_id)
        if secret is None:
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown.clear()
            self._unknown[bot_id] = now + NEGATIVE_TTL
            self._known.pop(bot_id, None)
        else:
            self._known[bot_id] = (now + POSITIVE_TTL, secret)
            self._unknown.pop(bot_id, None)
        return secret


def database_loader(db: Database) -> Callable[[int], str | None]:
    def load(bot_id: int) -> str | None:
        with db.session() as session:
            return session.scalar(select(Bot.webhook_secret).where(Bot.id == bot_id))

    return load
