"""Helpers for the PIX tests: the PSP stand-in, an adapter pointed at it, a callback receiver.

conftest.py makes fixtures of them (psp, sandbox, adapter); the test_pix_* modules also
use them directly.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from grimbots.lab.sandbox.pix import PixSandboxConfig, PixSandboxServer, start_in_thread
from grimbots.pix import ApiPixAdapter, PixSettings

PIX_KEY = "a3f1c2d4-5b6e-4f70-8a9b-0c1d2e3f4a5b"  # an EVP (random) key
WEBHOOK_SECRET = "test-webhook-secret-0123456789"
# One client for the tests' own control calls (a new client per call costs a TLS set-up),
# without keep-alive: servers come and go between tests.
HTTP = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def start_sandbox(**config: Any) -> PixSandboxServer:
    options = {"pix_key": PIX_KEY, "webhook_secret": WEBHOOK_SECRET, **config}
    return start_in_thread(config=PixSandboxConfig(**options))


def adapter_for(server: PixSandboxServer, read_timeout: float = 2.0) -> ApiPixAdapter:
    config = server.state.config
    return ApiPixAdapter(
        PixSettings(
            base_url=server.base_url,
            client_id=config.client_id,
            client_secret=config.client_secret,
            pix_key=PIX_KEY,
            webhook_secret=WEBHOOK_SECRET,
            read_timeout_seconds=read_timeout,
        )
    )


class Receiver(ThreadingHTTPServer):
    """A stand-in for the app's PIX webhook: records every POST and answers `status`."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 makes concurrent callbacks wait for SYN retries

    def __init__(self, status: int = 200):
        self.status = status
        self.lock = threading.Lock()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.request_paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        threading.Thread(
            target=self.serve_forever, args=(0.02,), name="pix-receiver", daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/webhook/pix/apipix"

    def received(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.requests)

    def paths(self) -> list[str]:
        with self.lock:
            return list(self.request_paths)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.requests.append((dict(self.headers.items()), body))
            self.server.request_paths.append(self.path)
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()
