"""/admin and /metrics (which shows revenue) live on the operator listener only; the public
one, which Telegram and the PSP reach, answers them 404 (issue 12)."""

from __future__ import annotations

import httpx
from grimbots.lab.servers import (
    ADMIN_TOKEN,
    Process,
    free_port,
    gunicorn_command,
    port_open,
    wait_until,
)


def test_operator_paths_answer_only_on_the_operator_port(env, tmp_path, bot):
    public, ops = free_port(), free_port()
    proc = Process(
        gunicorn_command(public, ops, workers=1),
        env | {"GRIMBOTS_OPS_PORT": str(ops)},
        tmp_path / "gunicorn.log",
    )
    try:
        wait_until(lambda: port_open(public) and port_open(ops), timeout=20, what="gunicorn")
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for path in ("/metrics", "/admin/bots", "/admin/", "/metricsx"):
            # Even a Host header naming the operator port changes nothing.
            headers = auth | {"Host": f"127.0.0.1:{ops}"}
            answer = httpx.get(f"http://127.0.0.1:{public}{path}", headers=headers)
            assert answer.status_code == 404, (path, answer.text)
        assert httpx.get(f"http://127.0.0.1:{ops}/metrics").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{ops}/admin/bots", headers=auth).status_code == 200
        for port in (public, ops):
            assert httpx.get(f"http://127.0.0.1:{port}/health").status_code in (200, 503)
        update = httpx.post(
            f"http://127.0.0.1:{public}/webhook/telegram/{bot.id}",
            json={"update_id": 1},
            headers={"X-Telegram-Bot-Api-Secret-Token": bot.secret},
        )
        assert update.status_code == 200
    finally:
        proc.stop()
