"""The web restarts on a listening socket someone else holds (systemd's grimbots-web.socket in
production) while clients keep their connections alive and post: every update is answered,
none waits for a client timeout.

The socket is held here as systemd holds it: bound and listening in this process, handed to
gunicorn as fd 3 with LISTEN_FDS/LISTEN_PID, kept open across the restart.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import orjson
from grimbots.lab.servers import gunicorn_command, wait_until

CLIENTS = 12


# systemd's hand-over: the socket as fd 3, LISTEN_FDS=1 and LISTEN_PID naming the process
# that execs gunicorn (so gunicorn takes the socket as its own).
HAND_OVER = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3);"
    " os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()));"
    " os.execv(sys.argv[2], sys.argv[2:])"
)


def start_on(listener: socket.socket, env: dict, log) -> subprocess.Popen:
    """gunicorn on the held socket, with the role's graceful timeout, as systemd starts it."""
    port = listener.getsockname()[1]
    command = [*gunicorn_command(port, workers=4), "--graceful-timeout", "5"]
    return subprocess.Popen(
        [sys.executable, "-c", HAND_OVER, str(listener.fileno()), *command],
        env=env,
        pass_fds=(listener.fileno(),),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class Client(threading.Thread):
    """One keep-alive connection posting updates, as HAProxy or a load generator would."""

    def __init__(self, port: int, bot, first_id: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.bot, self.next_id, self.stop = port, bot, first_id, stop
        self.pause = 0.01 + (first_id // 1_000_000 % 4) * 0.4
        self.answers: dict[int, int] = {}  # status -> count
        self.errors: list[tuple[str, float]] = []  # (error, seconds it took)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        while not self.stop.is_set():
            body = orjson.dumps({"update_id": self.next_id})
            self.next_id += 1
            started = time.monotonic()
            try:
                conn.request(
                    "POST",
                    f"/webhook/telegram/{self.bot.id}",
                    body,
                    {
                        "Content-Type": "application/json",
                        "X-Telegram-Bot-Api-Secret-Token": self.bot.secret,
                    },
                )
                answer = conn.getresponse()
                answer.read()
                self.answers[answer.status] = self.answers.get(answer.status, 0) + 1
                if answer.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append((type(exc).__name__, time.monotonic() - started))
                conn.close()
            time.sleep(self.pause)


def test_a_restart_on_the_held_socket_answers_every_update(env, tmp_path, bot):
    listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
    port = listener.getsockname()[1]
    log = open(tmp_path / "gunicorn.log", "ab")  # noqa: SIM115 - closed below
    # No per-bot admission limit: one bot carries the whole load here.
    env = env | {"GRIMBOTS_BOT_ADMISSION_PER_SECOND": "0"}
    web = start_on(listener, env, log)
    stop = threading.Event()
    clients = [Client(port, bot, 1_000_000 * (i + 1), stop) for i in range(CLIENTS)]
    try:
        wait_until(
            lambda: b"Booting worker" in (tmp_path / "gunicorn.log").read_bytes(),
            timeout=20,
            what="gunicorn",
        )
        for client in clients:
            client.start()
        wait_until(lambda: all(sum(c.answers.values()) > 5 for c in clients), what="load")
        for _ in range(2):
            os.killpg(web.pid, signal.SIGTERM)  # systemctl restart: stop, then start
            web.wait(30)
            web = start_on(listener, env, log)
            wait_until(lambda: all(sum(c.answers.values()) > 5 for c in clients), what="answers")
            before = [sum(c.answers.values()) for c in clients]
            wait_until(
                lambda b=before: all(
                    sum(c.answers.values()) > n + 5 for c, n in zip(clients, b, strict=True)
                ),
                timeout=30,
                what="every client answered after the restart",
            )
    finally:
        stop.set()
        for client in clients:
            client.join(30)
        if web.poll() is None:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(30)
        log.close()
        listener.close()
    answers: dict[int, int] = {}
    for client in clients:
        for status, count in client.answers.items():
            answers[status] = answers.get(status, 0) + count
    errors = [e for c in clients for e in c.errors]
    print(f"\nanswers {answers}, errors {errors}")
    assert set(answers) == {200}, answers
    assert errors == [], errors
