"""The webhooks' answers: a status and a JSON body, the refusals both ingests share, the
body reader that enforces a size cap, and the HTTP metrics of one answered call.

Framework-free: the Telegram ingest (grimbots.telegram_ingest), the PIX ingest
(grimbots.pix_ingest) and the WSGI fast path (grimbots.web.fast_webhook) build on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from grimbots import metrics

JSON_HEADERS = [("Content-Type", "application/json")]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


OK = Answer(200, b'{"ok":true}')


def error_answer(status: int, message: str) -> Answer:
    return Answer(status, orjson.dumps({"ok": False, "error": message}))


MALFORMED_BODY = error_answer(400, "malformed body")
TOO_LARGE = error_answer(413, "body too large")
UNAVAILABLE = error_answer(503, "temporarily unavailable, retry")


def read_body(
    content_length: str | None, read: Callable[[int], bytes], limit: int
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


def timed(route: str, handler: Callable[[], Answer]) -> Answer:
    """Run a handler and record the HTTP metrics for it (used by the fast path)."""
    started = time.perf_counter()
    answer = handler()
    metrics.observe_http(route, answer.status, time.perf_counter() - started)
    return answer
