"""The Telegram ingest: authenticate a webhook call, validate, dedupe and enqueue.

Framework-free on purpose: both the Flask blueprint and the thin WSGI fast path in
grimbots.web.fast_webhook call TelegramIngest.handle(). The hot path does no database
work (secrets come from BotSecretCache) and exactly one Redis round trip (ingest.lua).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from importlib import resources

import orjson
import redis

from grimbots import metrics
from grimbots.answers import OK, UNAVAILABLE, Answer, error_answer, read_body
from grimbots.bot_secrets import BotSecretCache
from grimbots.fast_redis import FastScriptClient
from grimbots.job_hash import JobHashBuilder
from grimbots.logs import event
from grimbots.queues import PROCESS_UPDATE, TASKS, update_job_id
from grimbots.settings import Settings

log = logging.getLogger(__name__)

# Telegram's largest real update: a message of 4,096 characters (up to 24 KiB as JSON with
# \uXXXX escapes) quoting another of the same size, with entities, a reply markup and a
# caption; 256 KiB holds it several times over. Bigger bodies are refused before reading.
MAX_BODY_BYTES = 256 * 1024
# bots.id is a 32-bit integer in PostgreSQL (SQLite: 64-bit); Telegram's update_id is
# stored as a 64-bit one. Values outside are refused before any lookup or write.
MAX_BOT_ID = 2**31 - 1
MAX_UPDATE_ID = 2**63 - 1
NOT_FOUND = error_answer(404, "unknown bot")
FORBIDDEN = error_answer(403, "bad secret token")
# One bot's flood must not starve the others: past its admission limit per second an update
# is refused, and Telegram delivers it again later (it retries every answer but a 2xx).
OVER_LIMIT = error_answer(429, "too many updates for this bot, retry")


class TelegramIngest:
    def __init__(self, settings: Settings, secrets: BotSecretCache):
        self._secrets = secrets
        self._dedupe_ttl = settings.dedupe_ttl_seconds
        self._jobs = JobHashBuilder(PROCESS_UPDATE, TASKS)
        self._lua = (
            resources.files("grimbots")
            .joinpath("ingest.lua")
            .read_text()
            .replace("--[[CONSTANT_JOB_FIELDS]]", self._jobs.lua_table_items())
        )
        self._redis = FastScriptClient(settings, self._lua)
        self._queue_key = f"rq:queue:{TASKS}"
        self._admission_limit = settings.bot_admission_per_second

    def handle(
        self,
        bot_id: int,
        secret_header: str | None,
        content_length: str | None,
        read: Callable[[int], bytes],
    ) -> Answer:
        answer, outcome, reason = self._handle(bot_id, secret_header, content_length, read)
        metrics.UPDATES.labels(outcome, reason).inc()
        return answer

    def _handle(self, bot_id, secret_header, content_length, read) -> tuple[Answer, str, str]:
        if not 0 < bot_id <= MAX_BOT_ID:  # no such bot can exist: not even a lookup
            return NOT_FOUND, "rejected", "unknown_bot"
        try:
            secret = self._secrets.get(bot_id)
        except Exception:
            # Only on a cache miss; 503 makes Telegram retry later instead of losing it.
            log.exception("bot secret lookup failed", extra={"fields": {"bot_id": bot_id}})
            return UNAVAILABLE, "rejected", "unavailable"
        if secret is None:
            return NOT_FOUND, "rejected", "unknown_bot"
        if secret_header is None or not hmac.compare_digest(
            secret_header.encode(), secret.encode()
        ):
            return FORBIDDEN, "rejected", "bad_secret"

        body, refused, reason = read_body(content_length, read, MAX_BODY_BYTES)
        if refused is not None:
            return refused, "rejected", reason

        try:
            update = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error_answer(400, "body is not JSON"), "rejected", "not_json"
        if not isinstance(update, dict):
            return error_answer(400, "body is not a JSON object"), "rejected", "not_object"
        update_id = update.get("update_id")
        # bool is an int subclass: exclude it
        if type(update_id) is not int or not 0 <= update_id <= MAX_UPDATE_ID:
            return (
                error_answer(400, "update_id missing or not an integer"),
                "rejected",
                "no_update_id",
            )

        job_id = update_job_id(bot_id, update_id)
        data = self._jobs.data((bot_id, update_id, body.decode()))
        try:
            accepted = self._redis.evalsha(
                keys=[
                    f"grimbots:dedupe:{bot_id}:{update_id}",
                    f"rq:job:{job_id}",
                    self._queue_key,
                    "rq:queues",
                    f"grimbots:admitted:{bot_id}:{int(time.time())}",
                ],
                args=[
                    self._dedupe_ttl,
                    job_id,
                    self._jobs.timestamp(),
                    data,
                    f"telegram update {bot_id}:{update_id}",
                    self._admission_limit,
                ],
            )
        except redis.RedisError as exc:
            event(
                log,
                logging.WARNING,
                "redis unavailable, answering 503",
                bot_id=bot_id,
                update_id=update_id,
                error=type(exc).__name__,
            )
            return UNAVAILABLE, "rejected", "unavailable"
        if accepted == 1:
            return OK, "accepted", ""
        if accepted < 0:
            return OVER_LIMIT, "rejected", "over_limit"
        return OK, "duplicate", ""
