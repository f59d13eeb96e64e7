"""Prometheus metrics, correct across processes.

With PROMETHEUS_MULTIPROC_DIR set (it must be set before prometheus_client is imported,
that is, in the service's environment), every gunicorn worker and every RQ worker on the
host writes its samples to files in that directory and /metrics sums them. The directory
must be emptied when the host boots (a tmpfs such as systemd's RuntimeDirectory), not
when one service restarts, because the other services' files live there too.
Without it we fall back to the per-process registry (fine for one process, e.g. tests).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

HTTP_REQUESTS = Counter(
    "grimbots_http_requests_total", "HTTP requests answered", ["route", "status"]
)
HTTP_LATENCY = Histogram(
    "grimbots_http_request_duration_seconds",
    "Time to answer an HTTP request, in the app",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
UPDATES = Counter(
    "grimbots_telegram_updates_total",
    "Telegram webhook calls by outcome (accepted, duplicate, rejected) and reject reason",
    ["outcome", "reason"],
)
JOBS = Counter(
    "grimbots_jobs_total", "RQ jobs run, by queue and outcome", ["queue", "job", "outcome"]
)
JOB_DURATION = Histogram(
    "grimbots_job_duration_seconds",
    "RQ job run time",
    ["queue", "job"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
OUTBOX_SENDS = Counter(
    "grimbots_outbox_sends_total",
    "Outgoing Telegram calls by result (ok, retry_after, transient, blocked, rejected, unknown)",
    ["result"],
)

# Pre-create the label sets we always report, so dashboards see zeros instead of gaps.
for _outcome, _reason in (("accepted", ""), ("duplicate", "")):
    UPDATES.labels(_outcome, _reason)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """The exposition text for /metrics and its content type."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Called when a gunicorn worker exits: drops its live gauges (counters are kept)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
