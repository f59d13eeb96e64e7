"""Prometheus metrics, correct across processes.

With PROMETHEUS_MULTIPROC_DIR set (it must be set before prometheus_client is imported,
that is, in the service's environment), every gunicorn worker and every RQ worker on the
host writes its samples to files in that directory and /metrics sums them. A directory
is emptied only when every process writing to it has stopped, so the web and the RQ
workers write to one each (the web's restart must not wait for a worker's job to end):
the web names the workers' one in GRIMBOTS_WORKER_METRICS_DIR and /metrics sums both.
Without it we fall back to the per-process registry (fine for one process, e.g. tests).
"""

from __future__ import annotations

import glob
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

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

PIX_CHARGES = Counter(
    "grimbots_pix_charges_total",
    "Charge requests by outcome: created, reused (double tap), failed (PSP refused), "
    "retry (PSP unreachable, retried later), no_psp (no PSP configured: a buy that cannot work)",
    ["outcome"],
)
PIX_WEBHOOK = Counter(
    "grimbots_pix_webhook_total",
    "PSP callbacks by outcome (accepted, duplicate, rejected) and reject reason",
    ["provider", "outcome", "reason"],
)
PIX_WEBHOOK_AUTH_FAILURES = Counter(
    "grimbots_pix_webhook_auth_failures_total",
    "PSP callbacks refused for a missing or wrong signature (someone is probing, or a "
    "secret is out of step)",
    ["provider"],
)
PAYMENT_EVENTS = Counter(
    "grimbots_payment_events_total",
    "PIX payments reported by the PSP, by what they turned out to be (confirmed, late, "
    "duplicate, amount_mismatch, unknown_txid, ignored)",
    ["provider", "outcome"],
)
PAYMENTS_CONFIRMED = Counter(
    "grimbots_payments_confirmed_total",
    "Payments moved to paid (counted once, by the compare-and-set winner); late=true for "
    "money that arrived after the charge had expired",
    ["provider", "late"],
)
REVENUE_CENTS = Counter(
    "grimbots_revenue_cents_total",
    "Money received for confirmed payments, in cents (BRL), counted once per payment",
    ["provider"],
)
DELIVERIES = Counter(
    "grimbots_deliveries_total",
    "Access-link deliveries created: first (one per paid payment) or resend (an operator's)",
    ["kind"],
)
PAYMENTS_EXPIRED = Counter(
    "grimbots_payments_expired_total", "Pending charges given up as expired", ["provider"]
)


def observe_http(route: str, status: int, seconds: float | None) -> None:
    """One answered HTTP request: counted by route (a URL rule, not a path) and status,
    and its time observed when known."""
    if seconds is not None:
        HTTP_LATENCY.labels(route).observe(seconds)
    HTTP_REQUESTS.labels(route, str(status)).inc()


# Pre-create the label sets we always report, so dashboards see zeros instead of gaps.
for _outcome, _reason in (("accepted", ""), ("duplicate", "")):
    UPDATES.labels(_outcome, _reason)
for _outcome in ("created", "reused", "failed", "retry", "no_psp"):
    PIX_CHARGES.labels(_outcome)
for _kind in ("first", "resend"):
    DELIVERIES.labels(_kind)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class HostFilesCollector(Collector):
    """The samples every process of this host wrote, summed across the directories."""

    def __init__(self, *directories: str):
        self.directories = directories

    def collect(self):
        from prometheus_client import multiprocess

        for _ in range(3):
            files = [f for d in self.directories for f in glob.glob(os.path.join(d, "*.db"))]
            try:
                return multiprocess.MultiProcessCollector.merge(files, accumulate=True)
            except FileNotFoundError:
                continue  # a directory emptied under us (its services restart): read again
        return []


def render(*collectors: Collector) -> tuple[bytes, str]:
    """The exposition text for /metrics and its content type.

    `collectors` are evaluated for this scrape only (grimbots.metrics_collector: the state
    of Redis and the database), after the processes' own samples.
    """
    registry = REGISTRY
    if multiprocess_dir():
        directories = [multiprocess_dir(), os.environ.get("GRIMBOTS_WORKER_METRICS_DIR")]
        registry = CollectorRegistry()
        registry.register(HostFilesCollector(*filter(None, directories)))
    body = generate_latest(registry)
    if collectors:
        scrape = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            scrape.register(collector)
        body += generate_latest(scrape)
    return body, CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Called when a gunicorn worker exits: drops its live gauges (counters are kept)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
