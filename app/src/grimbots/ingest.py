"""Accept a Telegram webhook call: authenticate, validate, dedupe and enqueue.

Framework-free on purpose: both the Flask blueprint and the thin WSGI fast path in
grimbots.web.fast_webhook call TelegramIngest.handle(). The hot path does no database
work (secrets come from BotSecretCache) and exactly one Redis round trip (ingest.lua).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import orjson
import redis

from grimbots import metrics
from grimbots.bot_secrets import BotSecretCache
from grimbots.fast_redis import FastScriptClient
from grimbots.job_hash import JobHashBuilder
from grimbots.logs import event
from grimbots.queues import TASKS, update_job_id
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
PROCESS_UPDATE = "grimbots.jobs.updates.process_update"
JSON_HEADERS = [("Content-Type", "application/json")]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


OK = Answer(200, b'{"ok":true}')


def error_answer(status: int, message: str) -> Answer:
    return Answer(status, orjson.dumps({"ok": False, "error": message}))


NOT_FOUND = error_answer(404, "unknown bot")
MALFORMED_BODY = error_answer(400, "malformed body")
FORBIDDEN = error_answer(403, "bad secret token")
TOO_LARGE = error_answer(413, "body too large")
UNAVAILABLE = error_answer(503, "temporarily unavailable, retry")
# One bot's flood must not starve the others: past its admission limit per second an update
# is refused, and Telegram delivers it again later (it retries every answer but a 2xx).
OVER_LIMIT = error_answer(429, "too many updates for this bot, retry")


def read_body(
    content_length: str | None, read: Callable[[int], bytes], limit: int = MAX_BODY_BYTES
) -> tuple[bytes, Answer | None, str]:
    """(body, None, "") or (b"", the refusal, its reason) for a body over `limit` bytes.

    Checks the declared size before reading, and never reads more than the cap + 1 (a
    chunked body has no Content-Length). A body the server cannot read (broken chunked
    framing, a client gone mid-body) is the client's fault: 400, never a 500.
    """
    if content_length:
        try:
            declared = int(content_length)
        except ValueError:
            return b"", error_answer(400, "bad Content-Length"), "bad_request"
        if declared < 0:
            return b"", error_answer(400, "bad Content-Length"), "bad_request"
        if declared > limit:
            return b"", TOO_LARGE, "too_large"
    try:
        body = read(declared if content_length else limit + 1)
    except Exception:  # the server's own parse errors (gunicorn's, Werkzeug's) differ
        return b"", MALFORMED_BODY, "malformed_body"
    if len(body) > limit:
        return b"", TOO_LARGE, "too_large"
    return body, None, ""


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

        body, refused, reason = read_body(content_length, read)
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


def timed(route: str, handler: Callable[[], Answer]) -> Answer:
    """Run a handler and record the HTTP metrics for it (used by the fast path)."""
    started = time.perf_counter()
    answer = handler()
    metrics.HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)
    metrics.HTTP_REQUESTS.labels(route, str(answer.status)).inc()
    return answer
