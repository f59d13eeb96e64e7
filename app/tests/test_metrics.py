"""/metrics under gunicorn with several workers sums every process, RQ workers included."""

from __future__ import annotations

import re

import httpx
from grimbots.lab.servers import wait_until
from grimbots.queues import TASKS
from support import post_update, start_message


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(part in match.group(1).split(",") for part in wanted.split(",")):
            total += float(match.group(2))
    return total


def test_metrics_aggregate_across_gunicorn_and_rq_workers(
    env, bot, start_web, start_worker, tmp_path
):
    # As on a host: the web and the RQ workers each write to their own directory (so each
    # can restart alone), and the web's /metrics sums both.
    multiproc, worker_files = tmp_path / "prometheus-web", tmp_path / "prometheus-workers"
    multiproc.mkdir()
    worker_files.mkdir()
    base_url = start_web(
        workers=3,
        extra_env={
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
            "GRIMBOTS_WORKER_METRICS_DIR": str(worker_files),
        },
    )
    start_worker(TASKS, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(worker_files)})

    posts = 30
    for update_id in range(1, posts + 1):
        # A new connection each time, so the kernel spreads them over the workers.
        with httpx.Client(timeout=10) as client:
            assert (
                post_update(
                    base_url, bot.id, bot.secret, start_message(update_id, 900 + update_id), client
                ).status_code
                == 200
            )
    with httpx.Client(timeout=10) as client:
        post_update(base_url, bot.id, bot.secret, start_message(1, 901), client)  # duplicate
        post_update(base_url, bot.id, "wrong", start_message(99, 999), client)  # rejected

    # Counter files come from more than one gunicorn worker, so a sum was really needed.
    pids = {p.name.rsplit("_", 1)[1] for p in multiproc.glob("counter_*.db")}
    assert len(pids) >= 3, f"expected several processes writing metrics, got {pids}"

    def metrics() -> str:
        return httpx.get(f"{base_url}/metrics", timeout=10).text

    text = wait_until(
        lambda: (
            (t := metrics())
            and sample(t, "grimbots_jobs_total", queue=TASKS, outcome="ok") >= posts
            and t
        ),
        timeout=30,
        what="jobs counted",
    )
    assert sample(text, "grimbots_telegram_updates_total", outcome="accepted") == posts
    assert sample(text, "grimbots_telegram_updates_total", outcome="duplicate") == 1
    assert (
        sample(text, "grimbots_telegram_updates_total", outcome="rejected", reason="bad_secret")
        == 1
    )
    route = "/webhook/telegram/<int:bot_id>"
    assert sample(text, "grimbots_http_requests_total", route=route, status="200") == posts + 1
    assert sample(text, "grimbots_http_request_duration_seconds_count", route=route) == posts + 2
    assert sample(text, "grimbots_outbox_sends_total", result="ok") == posts
