"""`grimbots bots seed`: the load test's bots, PREFIX-001..PREFIX-COUNT, one offer each."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select

from grimbots.db import Database
from grimbots.models import Bot, Offer


def seed_bots(db: Database, count: int, name_prefix: str, price_cents: int) -> dict[str, Any]:
    """Make sure bots PREFIX-001..PREFIX-COUNT exist, each with one offer.

    Idempotent: existing bots and offers are kept as they are. Returns
    {"created": N, "bots": [{"id", "name", "secret", "offers": [id]}]}: the load
    generator's bots file, so it holds webhook secrets.
    """
    width = max(3, len(str(count)))
    names = [f"{name_prefix}-{i:0{width}d}" for i in range(1, count + 1)]
    created = 0
    with db.session() as session:
        existing = {b.name: b for b in session.scalars(select(Bot).where(Bot.name.in_(names)))}
        for index, name in enumerate(names, start=1):
            if name not in existing:
                # Shaped like a Bot API token; only a stand-in accepts it.
                token = f"{900_000_000 + index}:{name}-token-for-the-stand-in"
                bot = Bot(name=name, token=token, webhook_secret=secrets.token_urlsafe(32))
                session.add(bot)
                existing[name] = bot
                created += 1
        session.flush()
        bots = [existing[name] for name in names]
        offers_by_bot: dict[int, list[int]] = {b.id: [] for b in bots}
        for bot_id, offer_id in session.execute(
            select(Offer.bot_id, Offer.id).where(Offer.bot_id.in_(offers_by_bot)).order_by(Offer.id)
        ):
            offers_by_bot[bot_id].append(offer_id)
        for bot in bots:
            if not offers_by_bot[bot.id]:
                offer = Offer(
                    bot_id=bot.id,
                    name=f"{bot.name} course",
                    price_cents=price_cents,
                    access_link=f"https://example.invalid/{bot.name}",
                )
                session.add(offer)
                session.flush()
                offers_by_bot[bot.id].append(offer.id)
                created += 1
        result = [
            {"id": b.id, "name": b.name, "secret": b.webhook_secret, "offers": offers_by_bot[b.id]}
            for b in bots
        ]
    return {"created": created, "bots": result}
