"""The HTTP plumbing both stand-ins share: a keep-alive JSON handler and a threaded server.

Lean on purpose: the reply-path benchmark (app/bench/e2e.py) counts the stand-in's CPU
with everything else, and http.server's own header parsing (email.parser) and response
writing cost ~2/3 of a call. Requests are parsed into a plain case-insensitive mapping
and each answer leaves in one write.
"""

from __future__ import annotations

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

MAX_HEADER_LINES = 100
REASONS = {s.value: s.phrase for s in HTTPStatus}


class Headers(dict):
    """Request headers by lower-case name (what the handlers read: .get(name, default))."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> Any:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real services
    # Headers and body leave in two writes; with Nagle on, a keep-alive client waits for
    # the delayed ACK (40 ms) on every call.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read the recorded calls instead

    def parse_request(self) -> bool:
        """The request line and headers, without http.server's email.parser round."""
        self.request_version = version = "HTTP/0.9"  # for send_error before we know
        self.requestline = self.raw_requestline.decode("iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.close_connection = True
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad request line")
            return False
        self.command, self.path, self.request_version = version = words[0], words[1], words[2]
        headers = Headers()
        for _ in range(MAX_HEADER_LINES):
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("iso-8859-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            self.close_connection = True
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return False
        self.headers = headers  # type: ignore[assignment]
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            version == "HTTP/1.0" and connection != "keep-alive"
        )
        return True

    def _send(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = orjson.dumps(body)
        head = [
            f"HTTP/1.1 {status} {REASONS.get(status, '')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(data)}",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    # Tests fire bursts of concurrent calls; the default backlog of 5 stalls them.
    request_queue_size = 256
    allow_reuse_address = True

    def serve_in_thread(self, name: str, poll_interval: float = 0.5) -> None:
        """For tests: serve from a daemon thread; shutdown() takes up to `poll_interval`."""
        threading.Thread(
            target=self.serve_forever, args=(poll_interval,), name=name, daemon=True
        ).start()

    def serve_until_interrupted(self, banner: str) -> None:
        """`grimbots sandbox NAME`: say where it listens, serve until Ctrl-C, then close."""
        print(banner, flush=True)
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.server_close()
