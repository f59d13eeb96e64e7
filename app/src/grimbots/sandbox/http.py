"""The HTTP plumbing both stand-ins share: a keep-alive JSON handler and a threaded server."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real services
    # Headers and body leave in two writes; with Nagle on, a keep-alive client waits for
    # the delayed ACK (40 ms) on every call.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read the recorded calls instead

    def _send(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    # Tests fire bursts of concurrent calls; the default backlog of 5 stalls them.
    request_queue_size = 256
    allow_reuse_address = True
