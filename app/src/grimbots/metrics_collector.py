"""What the shared stores hold right now, read when Prometheus scrapes /metrics.

grimbots.metrics counts what this host's processes did (requests, jobs run, sends). The
state of Redis and the database is read at scrape time instead, so no process has to keep
it up to date: the /health check (database and Redis probes, queue sizes, live workers),
one Redis pipeline for RQ's job registries and two SQL statements on indexed columns,
each bounded by a short timeout. A part that fails is left out of the answer, never
failing the scrape; the health status then says why.

Every app host reads the same Redis and database, so every host reports the same queue,
outbox and payment figures: alert rules and dashboards take `max by (queue)` across hosts.
Only rows that are still in flight are counted (pending and sending outbox messages,
pending payments): totals of finished rows would be a full scan on every scrape, and the
counters in grimbots.metrics already count them as they happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from grimbots import health
from grimbots.jobs import maintenance
from grimbots.models import OutboxMessage, Payment
from grimbots.queues import ALL_QUEUES, get_queue
from grimbots.services import Services
from grimbots.statuses import OutboxStatus, PaymentStatus

HEALTH_STATUSES = ("healthy", "degraded", "unhealthy")
# RQ's registries beside the queue itself ("queued", from the /health check).
REGISTRIES = {
    "started": "started_job_registry",
    "scheduled": "scheduled_job_registry",
    "deferred": "deferred_job_registry",
    "failed": "failed_job_registry",
}
OUTBOX_IN_FLIGHT = (OutboxStatus.PENDING, OutboxStatus.SENDING)
STATEMENT_TIMEOUT_MS = 1000


class StateCollector(Collector):
    """Health, queues, workers, outbox backlog and pending payments, per scrape."""

    def __init__(self, services: Services):
        self.services = services

    def collect(self) -> Iterator[Metric]:
        status, report = health.check(self.services)
        yield _health_status(status)
        queues = report["checks"].get("queues", {})
        if queues.get("ok", True):
            yield from self._queues(queues)
            yield from self._maintenance()
        if report["checks"]["database"]["ok"]:
            yield from self._database()

    def _queues(self, queues: dict[str, dict[str, int]]) -> Iterator[Metric]:
        workers = GaugeMetricFamily(
            "grimbots_queue_workers", "Live RQ workers listening on the queue", labels=["queue"]
        )
        jobs = GaugeMetricFamily(
            "grimbots_queue_jobs",
            "RQ jobs of the queue by state: queued (waiting), started (running or abandoned "
            "by a dead worker), scheduled and deferred (waiting for a time or a dependency), "
            "failed (no retries left)",
            labels=["queue", "state"],
        )
        for queue in ALL_QUEUES:
            workers.add_metric([queue], queues[queue]["workers"])
            jobs.add_metric([queue, "queued"], queues[queue]["size"])
        try:
            sizes = self._registry_sizes()
        except Exception:  # Redis went away since the health check: report what we have
            sizes = {}
        for (queue, state), size in sizes.items():
            jobs.add_metric([queue, state], size)
        yield workers
        yield jobs

    def _maintenance(self) -> Iterator[Metric]:
        """What the maintenance sweeps did, on every host (grimbots.jobs.maintenance)."""
        try:
            stats = maintenance.stats(self.services.redis.raw)
        except Exception:  # Redis went away since the health check
            return
        requeued = CounterMetricFamily(
            "grimbots_maintenance_requeued_jobs",
            "Jobs that had used up their RQ retries, put back on their queue by the sweep",
            labels=["queue"],
        )
        for queue in ALL_QUEUES:
            requeued.add_metric([queue], stats.get(f"requeued:{queue}", 0.0))
        yield requeued
        yield CounterMetricFamily(
            "grimbots_maintenance_abandoned_jobs",
            "Jobs found abandoned by a dead worker and handed back to RQ by the sweep",
            value=stats.get("abandoned", 0.0),
        )
        yield CounterMetricFamily(
            "grimbots_maintenance_orphaned_messages",
            "Outbox messages left pending with no job, queued for sending by the sweep",
            value=stats.get("orphans", 0.0),
        )
        if "last_run" in stats:
            yield GaugeMetricFamily(
                "grimbots_maintenance_last_run_timestamp_seconds",
                "When a maintenance sweep last ran, on any host",
                value=stats["last_run"],
            )

    def _registry_sizes(self) -> dict[tuple[str, str], int]:
        connection = self.services.redis.raw
        pipe = connection.pipeline(transaction=False)
        keys = []
        for name in ALL_QUEUES:
            queue = get_queue(name, connection)
            for state, registry in REGISTRIES.items():
                pipe.zcard(getattr(queue, registry).key)
                keys.append((name, state))
        return dict(zip(keys, pipe.execute(), strict=True))

    def _database(self) -> Iterator[Metric]:
        try:
            outbox, payments = self._in_flight_rows()
        except Exception:  # a slow or failing database must not fail the scrape
            return
        messages = GaugeMetricFamily(
            "grimbots_outbox_messages",
            "Outgoing Telegram messages not sent yet: pending (to send) or sending (a send "
            "whose outcome is unknown, never retried blindly)",
            labels=["status"],
        )
        oldest = GaugeMetricFamily(
            "grimbots_outbox_oldest_message_timestamp_seconds",
            "Creation time of the oldest message in that status (absent when there is none)",
            labels=["status"],
        )
        for status in OUTBOX_IN_FLIGHT:
            count, first = outbox.get(status, (0, None))
            messages.add_metric([status], count)
            if first is not None:
                oldest.add_metric([status], _timestamp(first))
        yield messages
        yield oldest

        count, first = payments
        yield GaugeMetricFamily(
            "grimbots_payments_pending", "PIX charges waiting to be paid", value=count
        )
        if first is not None:
            yield GaugeMetricFamily(
                "grimbots_payments_pending_oldest_timestamp_seconds",
                "Creation time of the oldest pending PIX charge (absent when there is none)",
                value=_timestamp(first),
            )

    def _in_flight_rows(self):
        outbox_query = (
            select(OutboxMessage.status, func.count(), func.min(OutboxMessage.created_at))
            .where(OutboxMessage.status.in_(OUTBOX_IN_FLIGHT))
            .group_by(OutboxMessage.status)
        )
        payments_query = select(func.count(), func.min(Payment.created_at)).where(
            Payment.status == PaymentStatus.PENDING
        )
        with self.services.db.session() as session:
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            outbox = {
                status: (count, first) for status, count, first in session.execute(outbox_query)
            }
            payments = tuple(session.execute(payments_query).one())
        return outbox, payments


def _health_status(current: str) -> Metric:
    family = GaugeMetricFamily(
        "grimbots_health_status",
        "The /health status (1 for the current one): healthy, degraded (a queue has no "
        "worker), unhealthy (the database or Redis does not answer)",
        labels=["status"],
    )
    for status in HEALTH_STATUSES:
        family.add_metric([status], 1.0 if status == current else 0.0)
    return family


def _timestamp(moment: datetime) -> float:
    # SQLite hands back naive datetimes; the database writes them in UTC.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
