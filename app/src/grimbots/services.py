"""The per-process connection pools and clients, built once from Settings.

This is the only process-wide state: Redis pool, database engine, Telegram client, the PSP
adapter (None when no PSP is configured; see Settings.pix) and the cache of bot profiles.
Web processes build it in create_app(); RQ jobs call get_services(), which builds it from
the environment on first use in the worker process.
"""

from __future__ import annotations

from dataclasses import dataclass

from grimbots.bot_profiles import BotProfiles
from grimbots.db import Database
from grimbots.pix import ApiPixAdapter, PixAdapter
from grimbots.redis_pool import RedisManager
from grimbots.settings import Settings, load_settings_or_exit
from grimbots.telegram import TelegramClient


@dataclass
class Services:
    settings: Settings
    redis: RedisManager
    db: Database
    telegram: TelegramClient
    bots: BotProfiles
    pix: PixAdapter | None = None

    @classmethod
    def build(cls, settings: Settings, worker: bool = False) -> Services:
        db = Database(settings)
        return cls(
            settings=settings,
            redis=RedisManager(settings, ride_through_failover=worker),
            db=db,
            telegram=TelegramClient(settings.telegram_api_url, settings.telegram_read_timeout),
            bots=BotProfiles(db),
            pix=ApiPixAdapter(settings.pix) if settings.pix is not None else None,
        )


_current: Services | None = None


def init_services(settings: Settings, worker: bool = False) -> Services:
    global _current
    _current = Services.build(settings, worker=worker)
    return _current


def get_services() -> Services:
    if _current is None:
        return init_services(load_settings_or_exit())
    return _current
