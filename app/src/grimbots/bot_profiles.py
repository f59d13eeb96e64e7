"""Per-process cache of what the reply path reads about a bot: token, welcome text, offers,
its @username.

Every update used to load its bot and offers and every send its token: three queries per
update for data that changes a few times a month. Like the webhook's secrets
(grimbots.bot_secrets, same cache and TTLs), each worker keeps them for POSITIVE_TTL
seconds, so an edited welcome text or a new offer shows within that time. A "buy" is
still checked against the database by create_charge, which loads the offer itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from grimbots.bot_secrets import BotSecretCache
from grimbots.db import Database
from grimbots.models import Bot, Offer


@dataclass(frozen=True)
class OfferInfo:
    id: int
    name: str
    price_cents: int


@dataclass(frozen=True)
class BotProfile:
    id: int
    token: str
    welcome_text: str
    offers: tuple[OfferInfo, ...]
    username: str | None = None  # from getMe: tells group commands for us from others

    def offer(self, offer_id: int) -> OfferInfo | None:
        return next((o for o in self.offers if o.id == offer_id), None)


class BotProfiles:
    def __init__(self, db: Database):
        self._db = db
        self._cache = BotSecretCache(self._load)  # type: ignore[arg-type]

    def get(self, bot_id: int) -> BotProfile | None:
        """The bot as the reply path needs it, or None for an unknown bot."""
        return self._cache.get(bot_id)  # type: ignore[return-value]

    def _load(self, bot_id: int) -> BotProfile | None:
        with self._db.session() as session:
            bot = session.execute(
                select(Bot.token, Bot.welcome_text, Bot.username).where(Bot.id == bot_id)
            ).first()
            if bot is None:
                return None
            offers = session.execute(
                select(Offer.id, Offer.name, Offer.price_cents)
                .where(Offer.bot_id == bot_id)
                .order_by(Offer.id)
            ).all()
        return BotProfile(
            id=bot_id,
            token=bot.token,
            welcome_text=bot.welcome_text or "",
            offers=tuple(OfferInfo(o.id, o.name, o.price_cents) for o in offers),
            username=bot.username,
        )
