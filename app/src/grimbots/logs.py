"""Structured logging: one event per line as key=value pairs.

Call sites pass context through `extra={"fields": {...}}` (see `event()`), so bot_id,
update_id and job_id are separate keys a log shipper can index. Tokens never reach a log
line: we log ids, never Bot API URLs (which embed the token) nor request bodies.
"""

from __future__ import annotations

import logging
import re
import sys
import time

# Bot API URLs embed the token (/bot<id>:<secret>/method); scrub them from any message
# that slips through (for example an httpx exception text) as a last line of defence.
_TOKEN_PATTERN = re.compile(r"bot\d+:[A-Za-z0-9_-]+")


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            "ts="
            + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level=" + record.levelname.lower(),
            "logger=" + record.name,
            "msg=" + _quote(_TOKEN_PATTERN.sub("bot<redacted>", record.getMessage())),
        ]
        for key, value in getattr(record, "fields", {}).items():
            if value is not None:
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            exc = self.formatException(record.exc_info)
            parts.append("exc=" + _quote(_TOKEN_PATTERN.sub("bot<redacted>", exc)))
        return " ".join(parts)


class SignalSafeStreamHandler(logging.StreamHandler):
    """A StreamHandler that a signal handler may log through while it is writing.

    Python runs a signal handler in the main thread between two steps of whatever it was
    doing, even inside this handler's write when the write waits (a full journal socket).
    RQ's SIGTERM handler logs "warm shut down requested": the nested write into the same
    buffered stream raised RuntimeError ("reentrant call") out of RQ's handler before it
    recorded the stop, and the worker ran on until systemd killed it (seen in the lab,
    75 s later). A line logged while another is being written is written right after it.
    (handle() holds this handler's RLock, so only the same thread can find it writing.)
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._writing = False
        self._deferred: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self._writing:
            self._deferred.append(record)
            return
        self._writing = True
        try:
            super().emit(record)
            while self._deferred:
                super().emit(self._deferred.pop(0))
        finally:
            self._writing = False


def configure_logging(level: str = "INFO") -> None:
    handler = SignalSafeStreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO, and our URLs contain the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def event(logger: logging.Logger, level: int, message: str, **fields: object) -> None:
    """Log one event with structured fields: event(log, logging.INFO, "sent", bot_id=1)."""
    logger.log(level, message, extra={"fields": fields})
