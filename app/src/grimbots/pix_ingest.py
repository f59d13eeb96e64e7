"""Accept a PSP callback (`POST /webhook/pix/<provider>`): authenticate, record, enqueue.

Framework-free like grimbots.telegram_ingest. The PSP retries any answer but 2xx, so we answer 200
only once every notice in the body is stored (one payment_events row per provider and
endToEndId: a repeat is a no-op) and its job is queued on `webhook`. Storage down -> 503,
never 200 while dropping. A caller that fails authentication stores nothing: 401, a
WARNING audit line (provider, client address, size; never the body) and a metric.
The caller's client certificate (mutual TLS) is checked before the body is read, and the
body is capped small (MAX_BODY_BYTES): nobody makes the app read a megabyte unasked.
Storing a notice proves nothing: the `webhook` job asks the PSP before money moves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import redis
from sqlalchemy.exc import SQLAlchemyError

from grimbots import metrics, payments
from grimbots.answers import OK, UNAVAILABLE, Answer, error_answer, read_body
from grimbots.jobs.webhook import enqueue_event
from grimbots.logs import event
from grimbots.pix import NotificationRejected, NotificationUnauthorized
from grimbots.queues import WEBHOOK, get_queue
from grimbots.services import Services

log = logging.getLogger(__name__)

UNKNOWN_PROVIDER = error_answer(404, "unknown payment provider")
UNAUTHORIZED = error_answer(401, "not authenticated (client certificate or signature)")
# A callback carries one notice per PIX, about 300 bytes each: 64 KiB holds 200 of them.
MAX_BODY_BYTES = 64 * 1024


class PixIngest:
    def __init__(self, services: Services):
        self._services = services

    def handle(
        self,
        provider: str,
        headers: Mapping[str, str],
        content_length: str | None,
        read: Callable[[int], bytes],
        client: str | None = None,
    ) -> Answer:
        answer, outcome, reason = self._handle(provider, headers, content_length, read, client)
        label = provider if answer is not UNKNOWN_PROVIDER else "unknown"
        metrics.PIX_WEBHOOK.labels(label, outcome, reason).inc()
        return answer

    def _handle(self, provider, headers, content_length, read, client):
        adapter = self._services.pix
        if adapter is None or provider != adapter.provider:
            return UNKNOWN_PROVIDER, "rejected", "unknown_provider"
        try:
            adapter.verify_client(headers)
            body, refused, reason = read_body(content_length, read, MAX_BODY_BYTES)
            if refused is not None:
                return refused, "rejected", reason
            callback = adapter.parse_notification(headers, body)
        except NotificationUnauthorized as exc:
            metrics.PIX_WEBHOOK_AUTH_FAILURES.labels(provider).inc()
            event(
                log,
                logging.WARNING,
                "audit: PSP callback refused, not authenticated",
                provider=provider,
                client=client,
                failed=exc.reason,
                bytes=content_length,
            )
            return UNAUTHORIZED, "rejected", exc.reason.replace(" ", "_")
        except NotificationRejected as exc:
            return error_answer(400, exc.reason), "rejected", "malformed"
        notices = callback.notices
        if callback.rejected:
            metrics.PIX_WEBHOOK.labels(provider, "rejected", "malformed_entry").inc(
                len(callback.rejected)
            )
            event(
                log,
                logging.WARNING,
                "PSP callback entries refused, the others taken",
                provider=provider,
                refused=len(callback.rejected),
                taken=len(notices),
                reasons="; ".join(callback.rejected[:5]),
            )

        try:
            with self._services.db.session() as session:
                recorded = [
                    (payments.record_notice(session, provider, notice, body, "webhook"), notice)
                    for notice in notices
                ]
        except SQLAlchemyError as exc:
            event(
                log,
                logging.WARNING,
                "database unavailable, answering 503",
                provider=provider,
                error=type(exc).__name__,
            )
            return UNAVAILABLE, "rejected", "unavailable"

        queued = 0
        try:
            queue = get_queue(WEBHOOK, self._services.redis.raw)
            for (event_id, processed), notice in recorded:
                # A processed event needs no job; an unprocessed one may have lost its job
                # (Redis was down when it first came), so a repeat queues it again.
                if not processed and enqueue_event(queue, event_id, provider, notice.event_key):
                    queued += 1
        except redis.RedisError as exc:
            event(
                log,
                logging.WARNING,
                "redis unavailable, answering 503",
                provider=provider,
                error=type(exc).__name__,
            )
            return UNAVAILABLE, "rejected", "unavailable"
        event(
            log,
            logging.INFO,
            "PSP callback accepted",
            provider=provider,
            notices=len(notices),
            queued=queued,
            txids=",".join(n.txid or "-" for n in notices[:10]),
        )
        return OK, ("accepted" if queued else "duplicate"), ""
