"""The process-wide Redis connection pool (the seed's "RedisManager").

One bounded pool per process. gunicorn forks its workers after importing the app, and a
socket shared across a fork corrupts both sides' replies, so the pool remembers the pid
that built it and a forked child builds its own on first use.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from grimbots.logs import event
from grimbots.settings import Settings

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
HEALTH_CHECK_INTERVAL = 30
# How long a caller waits for a free connection when all pool_size are busy, before
# failing (and the webhook answering 503) instead of queueing forever.
POOL_WAIT_TIMEOUT = 2.0
# Workers wait for Redis for as long as it is away instead of dying mid-job: a command that
# fails on a connection error is retried on a fresh connection (which asks Sentinel for the
# primary again), 0.1 s doubling to 1 s between tries, without end. A worker that gave up
# after a budget (it had about 20 s) left its started jobs to the maintenance sweep, minutes
# later, and Sentinel's failover can outlast any such budget: a failed first election is
# tried again after 2 x failover-timeout (120 s with the redis role's defaults). A job stuck
# on Redis is still stopped by its timeout; a retried write may run twice, and every job and
# effect is idempotent by key, which makes that safe.
WAIT_LOG_EVERY = 30  # tries: about 30 s apart, from the 5th try on (1 s between)


class WaitForRedis(Retry):
    """Retries without end, and says so in the log on the first failure and every
    WAIT_LOG_EVERY after it (redis-py's own retries are silent)."""

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def fail_and_log(error: Exception, failures: int) -> None:
            if failures == 1 or failures % WAIT_LOG_EVERY == 0:
                event(
                    log,
                    logging.WARNING,
                    "redis unavailable, retrying",
                    tries=failures,
                    error=str(error),
                )
            if with_failure_count:
                fail(error, failures)
            else:
                fail(error)

        return super().call_with_retry(do, fail_and_log, is_retryable, with_failure_count=True)


FAILOVER_RETRY = WaitForRedis(ExponentialBackoff(cap=1.0, base=0.1), retries=-1)


class PrimaryFollowingConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks Sentinel for the primary on every reconnect.

    redis-py (8.1) reconnects a dropped connection to the address it had (redis/redis-py
    #3874, #3560): after a failover that is the old primary, dead or demoted, so a worker
    spent its whole retry budget there and quit. Resolving the primary on each try, and
    leaving the retries to the command (FAILOVER_RETRY), follows the promotion instead.
    """

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True):
        if self._sock:
            return
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)


class RedisManager:
    """Owns one pool per process; hands out a text client and a bytes client (for RQ).

    ride_through_failover: for workers. The web keeps failing fast (503, /health) instead.
    """

    def __init__(self, settings: Settings, ride_through_failover: bool = False):
        self._settings = settings
        self._ride_through_failover = ride_through_failover
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._text: redis.Redis | None = None
        self._bytes: redis.Redis | None = None

    def _common_kwargs(self) -> dict[str, Any]:
        return {
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_keepalive": True,
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "retry_on_timeout": False,
        }

    def _build(self) -> None:
        s = self._settings
        common = self._common_kwargs()
        if self._ride_through_failover:
            common["retry"] = FAILOVER_RETRY
        if s.uses_sentinel:
            # Sentinel resolves the current master on connect, so a failover is followed
            # without restarting the process. redis-py's Sentinel pool is bounded by
            # max_connections too, but fails fast instead of waiting for a free slot.
            sentinel = Sentinel(
                list(s.redis_sentinels),
                sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT, "password": None},
                password=s.redis_password,
                db=s.redis_db,
                connection_class=PrimaryFollowingConnection,
                **common,
            )
            text = sentinel.master_for(
                s.redis_sentinel_master,
                decode_responses=True,
                max_connections=s.redis_pool_size,
            )
            raw = sentinel.master_for(
                s.redis_sentinel_master,
                decode_responses=False,
                max_connections=s.redis_pool_size,
            )
        else:
            text_pool = redis.BlockingConnectionPool.from_url(
                s.redis_url,
                max_connections=s.redis_pool_size,
                timeout=POOL_WAIT_TIMEOUT,
                decode_responses=True,
                **common,
            )
            raw_pool = redis.BlockingConnectionPool.from_url(
                s.redis_url,
                max_connections=s.redis_pool_size,
                timeout=POOL_WAIT_TIMEOUT,
                decode_responses=False,
                **common,
            )
            text = redis.Redis(connection_pool=text_pool)
            raw = redis.Redis(connection_pool=raw_pool)
        self._text, self._bytes, self._pid = text, raw, os.getpid()

    def _ensure(self) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._build()

    @property
    def text(self) -> redis.Redis:
        """Client returning str: for our own keys (dedupe, caches, health)."""
        self._ensure()
        assert self._text is not None
        return self._text

    @property
    def raw(self) -> redis.Redis:
        """Client returning bytes: RQ requires decode_responses=False."""
        self._ensure()
        assert self._bytes is not None
        return self._bytes

    def pool_figures(self) -> dict[str, int]:
        self._ensure()
        figures: dict[str, int] = {"max_connections": self._settings.redis_pool_size}
        for label, client in (("text", self._text), ("bytes", self._bytes)):
            pool = client.connection_pool  # type: ignore[union-attr]
            try:  # private helpers, present on both pool classes in redis-py 5-8
                figures[f"{label}_in_use"] = len(pool._get_in_use_connections())
                figures[f"{label}_idle"] = len(pool._get_free_connections())
            except AttributeError:
                pass
        return figures

    def ping(self) -> dict[str, Any]:
        """Health probe: PING round trip plus pool figures; raises on failure."""
        self.text.ping()
        return {"pool": self.pool_figures(), "sentinel": self._settings.uses_sentinel}
