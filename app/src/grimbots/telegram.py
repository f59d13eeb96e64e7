"""Telegram Bot API client: one httpx client per process, and a verdict for every call.

The Bot API is not idempotent, so what matters is whether a failed call may have been
delivered. A connection that never opened (or a 5xx answer) was not delivered: safe to
retry. A read timeout or a dropped connection after the request went out is unknown:
Telegram may have sent the message, so the caller must not send it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson

from grimbots.per_process import PerProcessClient

Outcome = Literal["ok", "retry_after", "transient", "blocked", "rejected", "unknown"]

CONNECT_TIMEOUT = 3.0
# Telegram closes idle connections; reusing a socket it already closed would look like a
# dropped connection (outcome unknown), so we drop idle sockets well before it does.
KEEPALIVE_EXPIRY = 4.0


@dataclass(frozen=True)
class ApiResult:
    outcome: Outcome
    status_code: int | None = None
    result: Any = None
    description: str = ""
    retry_after: float | None = None


class TelegramClient:
    def __init__(self, base_url: str, read_timeout: float = 10.0):
        self._base_url = base_url.rstrip("/")
        timeout = httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT)
        self._http = PerProcessClient(
            lambda: httpx.Client(
                timeout=timeout,
                limits=httpx.Limits(max_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY),
            )
        )

    @property
    def client(self) -> httpx.Client:
        return self._http.get()

    def call(self, token: str, method: str, payload: dict[str, Any]) -> ApiResult:
        # The URL carries the token: never log it, and never let httpx's exception text
        # (which contains the URL) out of this function.
        url = f"{self._base_url}/bot{token}/{method}"
        try:
            response = self.client.post(
                url, content=orjson.dumps(payload), headers={"Content-Type": "application/json"}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return ApiResult("transient", description=f"not delivered: {type(exc).__name__}")
        except httpx.TransportError as exc:
            # ReadTimeout, ReadError, RemoteProtocolError, WriteError...: the request may
            # have reached Telegram.
            return ApiResult("unknown", description=f"outcome unknown: {type(exc).__name__}")
        return self._verdict(response)

    @staticmethod
    def _verdict(response: httpx.Response) -> ApiResult:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        description = str(body.get("description", ""))[:500]
        if status == 200 and body.get("ok"):
            return ApiResult("ok", status, body.get("result"))
        if status == 429:
            params = body.get("parameters") or {}
            retry_after = params.get("retry_after") if isinstance(params, dict) else None
            if not isinstance(retry_after, int | float) or retry_after < 0:
                retry_after = 1
            return ApiResult(
                "retry_after", status, description=description, retry_after=float(retry_after)
            )
        if status >= 500:
            return ApiResult("transient", status, description=description or f"HTTP {status}")
        if status == 403:
            return ApiResult("blocked", status, description=description)
        return ApiResult("rejected", status, description=description or f"HTTP {status}")
