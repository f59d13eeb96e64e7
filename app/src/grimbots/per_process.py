"""An httpx client per process, made on first use.

gunicorn and RQ fork after the app's objects exist: a child that kept its parent's client
would share the parent's sockets. The client remembers the pid it was made in, and a
process that is not that one makes its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import httpx


class PerProcessClient:
    def __init__(self, make: Callable[[], httpx.Client]):
        self._make = make
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._client: httpx.Client | None = None

    def get(self) -> httpx.Client:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._client = self._make()
                    self._pid = os.getpid()
        assert self._client is not None
        return self._client

    def close(self) -> None:
        """Close this process's client (a parent's is left to the parent); the next get()
        makes a new one."""
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client, self._pid = None, None
