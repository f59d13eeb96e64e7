"""The health check shared by GET /health and `grimbots health`.

healthy: database and Redis answer and every queue has a live worker.
degraded: database and Redis answer, but some queue has no worker (work piles up).
unhealthy: the database or Redis does not answer (nothing can be accepted or done).
Bounded: every probe has a short timeout and the Redis part is two round trips.
"""

from __future__ import annotations

import time
from typing import Any

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
    database = _timed(services.db.ping)
    redis = _timed(services.redis.ping)
    checks: dict[str, Any] = {"database": database, "redis": redis}
    # Informative only: a box without a PSP still serves Telegram (see Settings.pix).
    checks["pix"] = {
        "configured": services.pix is not None,
        "provider": services.pix.provider if services.pix is not None else None,
    }
    if not redis["ok"]:
        checks["queues"] = {"ok": False, "error": "redis unavailable"}
        return "unhealthy", {"status": "unhealthy", "checks": checks}
    try:
        checks["queues"] = _queues(services)
    except Exception as exc:
        checks["queues"] = {"ok": False, "error": type(exc).__name__}
        return "unhealthy", {"status": "unhealthy", "checks": checks}
    if not database["ok"]:
        status = "unhealthy"
    elif any(q["workers"] == 0 for q in checks["queues"].values()):
        status = "degraded"
    else:
        status = "healthy"
    return status, {"status": status, "checks": checks}
