"""RQ jobs: plain importable functions with small JSON-able arguments (ids, not objects)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeVar

from rq import get_current_job

from grimbots import metrics

F = TypeVar("F", bound=Callable)


def current_job_id() -> str | None:
    job = get_current_job()
    return job.id if job is not None else None


def tracked(func: F) -> F:
    """Count the job by queue and outcome and time it (also when called inline)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        job = get_current_job()
        queue = job.origin if job is not None else "inline"
        started = time.perf_counter()
        outcome = "error"
        try:
            result = func(*args, **kwargs)
            outcome = "ok"
            return result
        finally:
            metrics.JOBS.labels(queue, func.__name__, outcome).inc()
            metrics.JOB_DURATION.labels(queue, func.__name__).observe(time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]
