"""Settings from the environment: one frozen object, validated once at start-up.

The Ansible role writes these variables into an env file; the names are a contract.
A bad value must stop the process with one line naming the variable (exit code 2),
never with a traceback, and never echoing a secret back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from grimbots.pix.settings import PixSettings

PREFIX = "GRIMBOTS_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_ADMIN_TOKEN_LENGTH = 16
# WAIT must give up before the webhook's Redis socket does (redis_pool.SOCKET_TIMEOUT, 2 s).
MAX_REPLICA_ACK_TIMEOUT_MS = 1500


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    # repr=False on everything that can carry a password or token, so a logged or
    # printed Settings object never leaks one.
    database_url: str = field(repr=False)
    admin_token: str = field(repr=False)
    redis_url: str | None = field(default=None, repr=False)
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "grimbots"
    redis_password: str | None = field(default=None, repr=False)
    redis_db: int = 0
    redis_pool_size: int = 20
    # The webhook's 200 waits for this many replicas to hold the update (Redis WAIT), so a
    # failover cannot lose an acknowledged update; 0 = answer once the primary has it.
    redis_min_replica_acks: int = 0
    redis_replica_ack_timeout_ms: int = 500
    telegram_api_url: str = "https://api.telegram.org"
    telegram_read_timeout: float = 10.0
    log_level: str = "INFO"
    dedupe_ttl_seconds: int = 86400
    # None when no GRIMBOTS_PIX_* variable is set: the Telegram side runs, and a "buy"
    # fails loudly (log line at ERROR, grimbots_pix_charges_total{outcome="no_psp"}).
    pix: PixSettings | None = None

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.redis_sentinels)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _require(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name)
    if value is None:
        raise SettingsError(f"{PREFIX}{name} is required but not set")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{PREFIX}{name} must be greater than 0, got {value}")
    return value


def _replica_acks(env: Mapping[str, str]) -> tuple[int, int]:
    acks_raw = _get(env, "REDIS_MIN_REPLICA_ACKS") or "0"
    if not acks_raw.isdigit():
        raise SettingsError(
            f"{PREFIX}REDIS_MIN_REPLICA_ACKS must be a whole number >= 0, got {acks_raw!r}"
        )
    timeout = _positive_int(env, "REDIS_REPLICA_ACK_TIMEOUT_MS", 500)
    if timeout > MAX_REPLICA_ACK_TIMEOUT_MS:
        raise SettingsError(
            f"{PREFIX}REDIS_REPLICA_ACK_TIMEOUT_MS must be at most {MAX_REPLICA_ACK_TIMEOUT_MS}"
            f" (below the Redis socket timeout), got {timeout}"
        )
    return int(acks_raw), timeout


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{PREFIX}{name} must be greater than 0, got {value}")
    return value


def _database_url(env: Mapping[str, str]) -> str:
    url = _require(env, "DATABASE_URL")
    # Accept the bare PostgreSQL schemes people paste, but always drive psycopg 3.
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            url = "postgresql+psycopg://" + url[len(bare) :]
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return url
    if url.startswith("postgresql+psycopg://") and urlsplit(url).hostname:
        return url
    # Never echo the value: it may hold a password.
    raise SettingsError(
        f"{PREFIX}DATABASE_URL must look like sqlite:////path/to/file.db or "
        "postgresql+psycopg://user:password@host:port/dbname"
    )


def _redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise SettingsError(f"{PREFIX}REDIS_URL must look like redis://[:password@]host:port/db")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise SettingsError(f"{PREFIX}REDIS_URL has an invalid port") from None
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise SettingsError(f"{PREFIX}REDIS_URL database must be a number, got {db!r}")
    return url


def _sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    result = []
    for item in raw.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"{PREFIX}REDIS_SENTINELS must be a comma-separated list of host:port, "
                f"got {item.strip()!r}"
            )
        result.append((host, int(port)))
    return tuple(result)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: os.environ); raise SettingsError on the first problem."""
    env = os.environ if env is None else env
    database_url = _database_url(env)

    redis_url = _get(env, "REDIS_URL")
    sentinels_raw = _get(env, "REDIS_SENTINELS")
    if redis_url and sentinels_raw:
        raise SettingsError(
            f"{PREFIX}REDIS_URL and {PREFIX}REDIS_SENTINELS are both set; set exactly one"
        )
    if not redis_url and not sentinels_raw:
        raise SettingsError(
            f"{PREFIX}REDIS_URL is required (or {PREFIX}REDIS_SENTINELS for Sentinel); "
            "neither is set"
        )
    sentinels = _sentinels(sentinels_raw) if sentinels_raw else ()
    redis_db_raw = _get(env, "REDIS_DB")
    if redis_db_raw is not None and not redis_db_raw.isdigit():
        raise SettingsError(f"{PREFIX}REDIS_DB must be a whole number >= 0, got {redis_db_raw!r}")

    min_replica_acks, replica_ack_timeout_ms = _replica_acks(env)

    admin_token = _require(env, "ADMIN_TOKEN")
    if len(admin_token) < MIN_ADMIN_TOKEN_LENGTH:
        raise SettingsError(
            f"{PREFIX}ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters long"
        )

    api_url = _get(env, "TELEGRAM_API_URL") or "https://api.telegram.org"
    if urlsplit(api_url).scheme not in ("http", "https") or not urlsplit(api_url).hostname:
        raise SettingsError(f"{PREFIX}TELEGRAM_API_URL must be an http(s) URL, got {api_url!r}")

    log_level = (_get(env, "LOG_LEVEL") or "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise SettingsError(f"{PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")

    return Settings(
        pix=_pix_settings(env),
        database_url=database_url,
        admin_token=admin_token,
        redis_url=_redis_url(redis_url) if redis_url else None,
        redis_sentinels=sentinels,
        redis_sentinel_master=_get(env, "REDIS_SENTINEL_MASTER") or "grimbots",
        redis_password=_get(env, "REDIS_PASSWORD"),
        redis_db=int(redis_db_raw) if redis_db_raw is not None else 0,
        redis_pool_size=_positive_int(env, "REDIS_POOL_SIZE", 20),
        redis_min_replica_acks=min_replica_acks,
        redis_replica_ack_timeout_ms=replica_ack_timeout_ms,
        telegram_api_url=api_url.rstrip("/"),
        telegram_read_timeout=_positive_float(env, "TELEGRAM_READ_TIMEOUT_SECONDS", 10.0),
        log_level=log_level,
        dedupe_ttl_seconds=_positive_int(env, "DEDUPE_TTL_SECONDS", 86400),
    )


def _pix_settings(env: Mapping[str, str]) -> PixSettings | None:
    """The PSP is optional, but all or nothing: one GRIMBOTS_PIX_* set means all required."""
    from grimbots.pix.settings import PixSettings

    if not any(key.startswith(PREFIX + "PIX_") and value.strip() for key, value in env.items()):
        return None
    return PixSettings.from_env(env)


def load_settings_or_exit(env: Mapping[str, str] | None = None) -> Settings:
    """For entry points (web, worker, CLI): one clear line on stderr and exit code 2."""
    try:
        return load_settings(env)
    except SettingsError as exc:
        print(f"grimbots: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
