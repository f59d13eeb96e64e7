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
from urllib.parse import urlsplit

from grimbots.env import (
    PREFIX,
    SettingsError,
    flag,
    get,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    require,
)
from grimbots.pix.settings import PixSettings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_ADMIN_TOKEN_LENGTH = 32
# The example vault's values start with this: a copy deployed unedited must not start.
PLACEHOLDER = "change-me"
# WAIT must give up before the webhook's Redis socket does (redis_pool.SOCKET_TIMEOUT, 2 s).
MAX_REPLICA_ACK_TIMEOUT_MS = 1500


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
    # Connections per process to PostgreSQL: the pool, and how many more a burst may open.
    # Every gunicorn worker and RQ worker process has its own (roles/postgres README sizes
    # max_connections from these).
    db_pool_size: int = 5
    db_max_overflow: int = 5
    # A statement running longer is cancelled: a stuck query must not hold a worker. Sent as
    # a connection option; behind PgBouncer (db_pgbouncer) the database role's own setting
    # applies instead, since transaction pooling shares server connections.
    db_statement_timeout_ms: int = 10_000
    # PgBouncer in transaction pooling between the app and PostgreSQL: no server-side
    # prepared statements (PgBouncer 1.18 cannot route them) and no startup options.
    db_pgbouncer: bool = False
    # The webhook's 200 waits for this many replicas to hold the update (Redis WAIT), so a
    # failover cannot lose an acknowledged update; 0 = answer once the primary has it.
    redis_min_replica_acks: int = 0
    redis_replica_ack_timeout_ms: int = 500
    telegram_api_url: str = "https://api.telegram.org"
    telegram_read_timeout: float = 10.0
    log_level: str = "INFO"
    dedupe_ttl_seconds: int = 86400
    # Updates one bot may have accepted per second (0: no limit). Telegram itself lets a
    # bot send about 30 messages a second: a bot receiving far more cannot answer them in
    # time anyway, and must not fill the queue ahead of every other bot.
    bot_admission_per_second: int = 100
    # The operator listener's port: /admin and /metrics (revenue) are served there only,
    # never on the public one that Telegram and the PSP reach. None: one listener for all
    # (a single process in development or tests).
    ops_port: int | None = None
    # /health says degraded when a job has sat in RQ's failed registry this long (grimbots.health).
    health_failed_job_seconds: int = 600
    # None when no GRIMBOTS_PIX_* variable is set: the Telegram side runs, and a "buy"
    # fails loudly (log line at ERROR, grimbots_pix_charges_total{outcome="no_psp"}).
    pix: PixSettings | None = None

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.redis_sentinels)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _replica_acks(env: Mapping[str, str]) -> tuple[int, int]:
    acks = non_negative_int(env, "REDIS_MIN_REPLICA_ACKS", 0)
    timeout = positive_int(env, "REDIS_REPLICA_ACK_TIMEOUT_MS", 500)
    if timeout > MAX_REPLICA_ACK_TIMEOUT_MS:
        raise SettingsError(
            f"{PREFIX}REDIS_REPLICA_ACK_TIMEOUT_MS must be at most {MAX_REPLICA_ACK_TIMEOUT_MS}"
            f" (below the Redis socket timeout), got {timeout}"
        )
    return acks, timeout


def _database_url(env: Mapping[str, str]) -> str:
    url = require(env, "DATABASE_URL")
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

    redis_url = get(env, "REDIS_URL")
    sentinels_raw = get(env, "REDIS_SENTINELS")
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
    redis_db_raw = get(env, "REDIS_DB")
    if redis_db_raw is not None and not redis_db_raw.isdigit():
        raise SettingsError(f"{PREFIX}REDIS_DB must be a whole number >= 0, got {redis_db_raw!r}")

    min_replica_acks, replica_ack_timeout_ms = _replica_acks(env)

    admin_token = require(env, "ADMIN_TOKEN")
    if len(admin_token) < MIN_ADMIN_TOKEN_LENGTH or PLACEHOLDER in admin_token:
        raise SettingsError(
            f"{PREFIX}ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters long "
            f"and not the example vault's {PLACEHOLDER!r} placeholder"
        )

    api_url = get(env, "TELEGRAM_API_URL") or "https://api.telegram.org"
    if urlsplit(api_url).scheme not in ("http", "https") or not urlsplit(api_url).hostname:
        raise SettingsError(f"{PREFIX}TELEGRAM_API_URL must be an http(s) URL, got {api_url!r}")

    log_level = (get(env, "LOG_LEVEL") or "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise SettingsError(f"{PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")

    return Settings(
        pix=_pix_settings(env),
        database_url=database_url,
        admin_token=admin_token,
        redis_url=_redis_url(redis_url) if redis_url else None,
        redis_sentinels=sentinels,
        redis_sentinel_master=get(env, "REDIS_SENTINEL_MASTER") or "grimbots",
        redis_password=get(env, "REDIS_PASSWORD"),
        redis_db=int(redis_db_raw) if redis_db_raw is not None else 0,
        redis_pool_size=positive_int(env, "REDIS_POOL_SIZE", 20),
        redis_min_replica_acks=min_replica_acks,
        redis_replica_ack_timeout_ms=replica_ack_timeout_ms,
        db_pool_size=positive_int(env, "DB_POOL_SIZE", 5),
        db_max_overflow=non_negative_int(env, "DB_MAX_OVERFLOW", 5),
        db_statement_timeout_ms=non_negative_int(env, "DB_STATEMENT_TIMEOUT_MS", 10_000),
        db_pgbouncer=flag(env, "DB_PGBOUNCER"),
        telegram_api_url=api_url.rstrip("/"),
        telegram_read_timeout=positive_float(env, "TELEGRAM_READ_TIMEOUT_SECONDS", 10.0),
        log_level=log_level,
        dedupe_ttl_seconds=positive_int(env, "DEDUPE_TTL_SECONDS", 86400),
        health_failed_job_seconds=positive_int(env, "HEALTH_FAILED_JOB_SECONDS", 600),
        bot_admission_per_second=non_negative_int(env, "BOT_ADMISSION_PER_SECOND", 100),
        ops_port=port(env, "OPS_PORT"),
    )


def _pix_settings(env: Mapping[str, str]) -> PixSettings | None:
    """The PSP is optional, but all or nothing: one GRIMBOTS_PIX_* set means all required."""
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
