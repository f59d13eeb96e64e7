"""The health check shared by GET /health and `grimbots health`.

healthy: database and Redis answer, every queue has a live worker and no job has been
  failing for long.
degraded: database and Redis answer, but some queue has no worker (work piles up), or a
  job has sat in RQ's failed registry for longer than GRIMBOTS_HEALTH_FAILED_JOB_SECONDS
  (600 by default: the maintenance sweep re-queues a failed job after 1, 2, 4, ... 30
  minutes, so it has been failing for about half an hour: look at it).
unhealthy: the database or Redis does not answer (nothing can be accepted or done).
Bounded: every probe has a short timeout and the Redis part is five round trips.
GET /health answers from the newest report (RecentCheck), refreshed off the request path.

The JSON keeps the seed's fields that operators' scripts read (status, timestamp in UTC
ISO 8601, the app's version) next to the per-check details (docs/operations.md).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from grimbots import __version__
from grimbots.jobs.maintenance import failed_jobs, last_run
from grimbots.queues import ALL_QUEUES
from grimbots.services import Services

WORKERS_KEY = "rq:workers:{queue}"  # set of worker keys, maintained by RQ's registration
QUEUE_KEY = "rq:queue:{queue}"


def _timed(probe) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = {"ok": True, **probe()}
    except Exception as exc:  # any failure means "down"; the type is enough to diagnose
        result = {"ok": False, "error": type(exc).__name__}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def _queues(services: Services) -> dict[str, dict[str, int]]:
    client = services.redis.text
    pipe = client.pipeline(transaction=False)
    for queue in ALL_QUEUES:
        pipe.smembers(WORKERS_KEY.format(queue=queue))
        pipe.llen(QUEUE_KEY.format(queue=queue))
    replies = pipe.execute()
    members = {q: sorted(replies[2 * i]) for i, q in enumerate(ALL_QUEUES)}
    sizes = {q: replies[2 * i + 1] for i, q in enumerate(ALL_QUEUES)}
    # A worker killed with SIGKILL stays in the set until RQ's maintenance cleans it, but
    # its own key expires with its heartbeat: count only workers whose key still exists.
    pipe = client.pipeline(transaction=False)
    for queue in ALL_QUEUES:
        for key in members[queue]:
            pipe.exists(key)
    alive = iter(pipe.execute())
    return {
        q: {"workers": sum(1 for _ in members[q] if next(alive)), "size": sizes[q]}
        for q in ALL_QUEUES
    }


def check(services: Services) -> tuple[str, dict[str, Any]]:
    checks = _checks(services)
    if not checks["redis"]["ok"] or "error" in checks["queues"] or not checks["database"]["ok"]:
        status = "unhealthy"
    elif any(q["workers"] == 0 for q in checks["queues"].values()) or any(
        (failed["oldest_seconds"] or 0) > services.settings.health_failed_job_seconds
        for failed in checks["failed_jobs"].values()
    ):
        status = "degraded"
    else:
        status = "healthy"
    return status, {
        "status": status,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "version": __version__,
        "checks": checks,
    }


def _checks(services: Services) -> dict[str, Any]:
    checks: dict[str, Any] = {
        "database": _timed(services.db.ping),
        "redis": _timed(services.redis.ping),
        # Informative only: a box without a PSP still serves Telegram (see Settings.pix).
        "pix": {
            "configured": services.pix is not None,
            "provider": services.pix.provider if services.pix is not None else None,
        },
    }
    if not checks["redis"]["ok"]:
        checks["queues"] = {"ok": False, "error": "redis unavailable"}
        return checks
    try:
        checks["queues"] = _queues(services)
        checks["failed_jobs"] = failed_jobs(services.redis.raw)
        # Informative: a sweep that stopped running shows here (and in an alert).
        ran = last_run(services.redis.raw)
        checks["maintenance"] = {
            "last_run_seconds_ago": None if ran is None else round(time.time() - ran, 1)
        }
    except Exception as exc:
        checks["queues"] = {"ok": False, "error": type(exc).__name__}
    return checks


class RecentCheck:
    """check(), answered at once from the newest report and refreshed in the background.

    A load balancer asks every second, and each check is several round trips to PostgreSQL
    and Redis. With the CPU saturated (the lab's 1,000 req/s stage, a backlog draining) the
    database probe alone took 0.1-0.7 s, HAProxy's 1 s check timed out on both app hosts
    and it took them out of rotation together: a quarter of the stage answered 503
    (docs/benchmarks.md). A busy host is still a working one. So a call answers with the
    newest report and starts one refresh when that report is older than `max_age`. With no
    report younger than `stale_after` (the first call, a process nobody asked for a while)
    the call checks in place. A refresh still running `stale_after` seconds after it
    started answers unhealthy: a hung dependency still takes the host out (the probes' own
    timeouts make that rare).
    """

    def __init__(self, services: Services, max_age: float = 1.0, stale_after: float = 10.0):
        self._services = services
        self._max_age = max_age
        self._stale_after = stale_after
        self._lock = threading.Lock()
        self._latest: tuple[str, dict[str, Any]] | None = None
        self._checked_at = 0.0
        self._refresh_started: float | None = None  # None: no refresh running

    def check(self) -> tuple[str, dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            latest, age, started = self._latest, now - self._checked_at, self._refresh_started
            start = started is None and (latest is None or age >= self._max_age)
            if start:
                self._refresh_started = now
        if start and (latest is None or age > self._stale_after):
            return self._refresh()
        if latest is None:  # another call's first check is still running
            return check(self._services)
        if start:
            threading.Thread(target=self._refresh, name="health-refresh", daemon=True).start()
        elif started is not None and now - started > self._stale_after:
            return "unhealthy", latest[1] | {
                "status": "unhealthy",
                "error": f"the health probes have not finished for {now - started:.0f} s",
            }
        return latest

    def _refresh(self) -> tuple[str, dict[str, Any]]:
        try:
            result = check(self._services)
            with self._lock:
                self._latest, self._checked_at = result, time.monotonic()
            return result
        finally:
            with self._lock:
                self._refresh_started = None
