"""Helpers for tests that drive real servers: free ports, waiting on conditions, processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

VENV_BIN = Path(sys.executable).parent
GRIMBOTS = str(VENV_BIN / "grimbots")
GUNICORN = str(VENV_BIN / "gunicorn")


def count(services, model, **filters) -> int:
    """Rows of `model` matching column == value filters."""
    from sqlalchemy import func, select

    query = select(func.count()).select_from(model)
    for name, value in filters.items():
        query = query.where(getattr(model, name) == value)
    with services.db.session() as session:
        return session.scalar(query)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll until condition() is truthy; return its value or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # servers still starting: keep polling
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {message} (last error: {last_error!r})"
    )


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Process:
    """A subprocess with its output in a file, stopped at teardown."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        stop_signal: signal.Signals = signal.SIGTERM,
    ):
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and its scheduler child)."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def post_update(
    base_url: str,
    bot_id: int,
    secret: str,
    update: dict | bytes,
    client: httpx.Client | None = None,
) -> httpx.Response:
    body = update if isinstance(update, bytes) else __import__("orjson").dumps(update)
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret, "Content-Type": "application/json"}
    url = f"{base_url}/webhook/telegram/{bot_id}"
    if client is not None:
        return client.post(url, content=body, headers=headers)
    return httpx.post(url, content=body, headers=headers, timeout=10)


def start_message(update_id: int, user_id: int, text: str = "/start") -> dict:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": user_id, "is_bot": False, "first_name": "Ana", "username": "ana"},
            "chat": {"id": user_id, "type": "private"},
            "date": 1700000000,
            "text": text,
        },
    }


def buy_callback(update_id: int, user_id: int, offer_id: int) -> dict:
    return {
        "update_id": update_id,
        "callback_query": {
            "id": f"cb-{update_id}",
            "from": {"id": user_id, "is_bot": False, "first_name": "Ana"},
            "message": {"message_id": 1, "chat": {"id": user_id, "type": "private"}},
            "data": f"buy:{offer_id}",
        },
    }
