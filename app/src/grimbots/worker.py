"""`grimbots worker QUEUE...`: an RQ worker with the scheduler.

SimpleWorker (jobs run in the worker process) rather than the forking Worker, measured
on the 2-core box (200 /start-like updates: lead upsert, inbound row, outbox row, one
sendMessage to the stand-in, SQLite): ~70 ms per job with SimpleWorker, ~270 ms with the
forking Worker, which forks a work-horse per job and so throws away the database pool and
the Telegram client's keep-alive connections every time. Our jobs are short and I/O bound.
A job that hangs is still stopped by RQ's timeout (SIGALRM in the worker's main thread);
a crash takes the worker down, systemd restarts it, and the outbox rules make the re-run
safe. It also keeps one Prometheus file set per worker.
SIGTERM is RQ's warm shutdown: finish the current job, then exit.
"""

from __future__ import annotations

import os
import socket

from rq import SimpleWorker, Worker

from grimbots.logs import configure_logging
from grimbots.metrics import mark_process_dead
from grimbots.queues import ALL_QUEUES, get_queue
from grimbots.services import init_services
from grimbots.settings import Settings

WORKER_CLASSES = {"simple": SimpleWorker, "fork": Worker}


def run_worker(
    settings: Settings, queue_names: list[str], burst: bool = False, worker_class: str = "simple"
) -> bool:
    unknown = [q for q in queue_names if q not in ALL_QUEUES]
    if unknown:
        raise ValueError(f"unknown queue(s): {', '.join(unknown)}; known: {', '.join(ALL_QUEUES)}")
    configure_logging(settings.log_level)
    services = init_services(settings, worker=True)
    connection = services.redis.raw
    queues = [get_queue(name, connection) for name in queue_names]
    worker = WORKER_CLASSES[worker_class](
        queues,
        connection=connection,
        name=f"{socket.gethostname()}.{os.getpid()}.{'-'.join(queue_names)}",
    )
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
    finally:
        mark_process_dead(os.getpid())
