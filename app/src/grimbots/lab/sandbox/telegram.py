"""A Telegram Bot API stand-in: a small real HTTP server that records every call.

Bot API:  POST/GET /bot<token>/<method> for sendMessage, answerCallbackQuery, setWebhook,
          getMe, deleteWebhook (JSON, form or query parameters), Telegram-shaped answers.
Control:  GET    /_sandbox/calls[?method=&chat_id=]   recorded calls, oldest first
          DELETE /_sandbox/calls                       forget calls and faults
          POST   /_sandbox/faults  JSON, any of:
                 {"status_429": {"count": N, "retry_after": S},
                  "status_500": {"count": N},
                  "blocked_chat_ids": [chat, ...],
                  "slow": {"delay": S, "count": N}}     (count omitted: every call)
A call is recorded when it arrives, before any delay, with the status it gets: a client
that gives up waiting still finds its call recorded (as Telegram would have sent it).
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from grimbots.lab.sandbox.http import JsonHandler, StandInServer

METHODS = {"sendMessage", "answerCallbackQuery", "setWebhook", "getMe", "deleteWebhook"}


class SandboxState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.message_ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.fail_429 = 0
            self.retry_after = 1
            self.fail_500 = 0
            self.blocked: set[int] = set()
            self.slow_delay = 0.0
            self.slow_count: int | None = 0

    def set_faults(self, spec: dict[str, Any]) -> None:
        with self.lock:
            if "status_429" in spec:
                self.fail_429 = int(spec["status_429"].get("count", 1))
                self.retry_after = int(spec["status_429"].get("retry_after", 1))
            if "status_500" in spec:
                self.fail_500 = int(spec["status_500"].get("count", 1))
            if "blocked_chat_ids" in spec:
                self.blocked = {int(c) for c in spec["blocked_chat_ids"]}
            if "slow" in spec:
                self.slow_delay = float(spec["slow"].get("delay", 0))
                count = spec["slow"].get("count")
                self.slow_count = None if count is None else int(count)

    def decide(self, chat_id: Any) -> tuple[int, dict[str, Any] | None, float]:
        """(status, error body or None, delay) for the next call; consumes one-shot faults."""
        with self.lock:
            delay = 0.0
            if self.slow_delay and (self.slow_count is None or self.slow_count > 0):
                delay = self.slow_delay
                if self.slow_count is not None:
                    self.slow_count -= 1
            if self.fail_429 > 0:
                self.fail_429 -= 1
                return (
                    429,
                    {
                        "ok": False,
                        "error_code": 429,
                        "description": f"Too Many Requests: retry after {self.retry_after}",
                        "parameters": {"retry_after": self.retry_after},
                    },
                    delay,
                )
            if self.fail_500 > 0:
                self.fail_500 -= 1
                return (
                    500,
                    {"ok": False, "error_code": 500, "description": "Internal Server Error"},
                    delay,
                )
            if _as_int(chat_id) in self.blocked:
                return (
                    403,
                    {
                        "ok": False,
                        "error_code": 403,
                        "description": "Forbidden: bot was blocked by the user",
                    },
                    delay,
                )
            return 200, None, delay


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _result(method: str, bot_id: int | None, params: dict[str, Any], message_id: int) -> Any:
    if method == "sendMessage":
        return {
            "message_id": message_id,
            "from": {"id": bot_id, "is_bot": True, "first_name": "Sandbox bot"},
            "chat": {"id": _as_int(params.get("chat_id")), "type": "private"},
            "date": int(time.time()),
            "text": params.get("text", ""),
        }
    if method == "getMe":
        return {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Sandbox bot",
            "username": f"sandbox_{bot_id}_bot",
        }
    return True


class Handler(JsonHandler):
    server: SandboxServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/_sandbox/calls":
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            with self.server.state.lock:
                calls = list(self.server.state.calls)
            if "method" in query:
                calls = [c for c in calls if c["method"] == query["method"]]
            if "chat_id" in query:
                calls = [c for c in calls if str(c["chat_id"]) == query["chat_id"]]
            self._send(200, {"calls": calls})
            return
        self._bot_api(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})

    def do_DELETE(self) -> None:
        if urlsplit(self.path).path == "/_sandbox/calls":
            self.server.state.reset()
            self._send(200, {"ok": True})
        else:
            self._send(404, {"ok": False, "description": "Not Found"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        raw = self._body()
        if url.path == "/_sandbox/faults":
            try:
                self.server.state.set_faults(orjson.loads(raw or b"{}"))
            except (ValueError, TypeError, AttributeError) as exc:
                self._send(400, {"ok": False, "description": str(exc)})
                return
            self._send(200, {"ok": True})
            return
        content_type = self.headers.get("Content-Type", "")
        try:
            if "json" in content_type:
                params = orjson.loads(raw or b"{}")
            else:
                params = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        except ValueError:
            self._send(
                400, {"ok": False, "error_code": 400, "description": "Bad Request: invalid JSON"}
            )
            return
        params.update({k: v[-1] for k, v in parse_qs(url.query).items()})
        self._bot_api(url.path, params)

    def _bot_api(self, path: str, params: dict[str, Any]) -> None:
        # /bot<id>:<secret>/<method>
        parts = path.strip("/").split("/")
        if len(parts) != 2 or not parts[0].startswith("bot") or ":" not in parts[0]:
            self._send(404, {"ok": False, "error_code": 404, "description": "Not Found"})
            return
        bot_id = _as_int(parts[0][3:].split(":", 1)[0])
        method = parts[1]
        if method not in METHODS:
            self._send(
                404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
            )
            return
        state = self.server.state
        status, error, delay = state.decide(params.get("chat_id"))
        call = {
            "method": method,
            "bot_id": bot_id,
            "chat_id": _as_int(params.get("chat_id")),
            "text": params.get("text"),
            "params": params,
            "status": status,
            "time": time.time(),
        }
        with state.lock:
            state.calls.append(call)
            message_id = next(state.message_ids)
        if delay:
            time.sleep(delay)
        if error is not None:
            self._send(status, error)
            return
        self._send(200, {"ok": True, "result": _result(method, bot_id, params, message_id)})


class SandboxServer(StandInServer):
    def __init__(self, address: tuple[str, int]):
        self.state = SandboxState()
        super().__init__(address, Handler)


def start_in_thread(host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
    """For tests: a running server on a free port (server.server_address)."""
    server = SandboxServer((host, port))
    server.serve_in_thread("telegram-sandbox")
    return server


def serve_forever(host: str, port: int) -> None:
    server = SandboxServer((host, port))
    server.serve_until_interrupted(
        f"telegram sandbox listening on http://{host}:{server.server_address[1]}"
    )
