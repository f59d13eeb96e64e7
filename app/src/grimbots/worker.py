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

BatchWorker (the default, "batch") is a SimpleWorker that, when it dequeues a Telegram
update and finds more waiting, takes up to BATCH_SIZE of them and works them together
(grimbots.jobs.updates.process_updates): RQ's bookkeeping for the whole batch goes to
Redis in two pipelines instead of ~60 commands per job, the database work in one
transaction, and the replies out concurrently. Each update is still its own RQ job
(`tg-<bot>-<update>`, queued by the webhook), started, finished, retried and swept exactly
as RQ does for one job: a worker killed mid-batch leaves every job of the batch in the
started registry, where the reconcile finds it (grimbots.queues.sweep_abandoned). If the
batch raises, its jobs run again one by one through RQ's own code path, so a failing
update fails (and is retried) alone. docs/benchmarks.md has the numbers.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from datetime import timedelta

from rq import Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus

from grimbots import metrics
from grimbots.logs import configure_logging
from grimbots.metrics import mark_process_dead
from grimbots.queues import ALL_QUEUES, JOB_TIMEOUT_SECONDS, PROCESS_UPDATE, get_queue
from grimbots.services import init_services
from grimbots.settings import Settings

# Enough to pay RQ's and the database's fixed costs once for many updates, few enough that
# the batch's replies (sent CONCURRENT_SENDS at a time) all leave within a second.
BATCH_SIZE = 32

log = logging.getLogger(__name__)


class StopRecordedFirst:
    """RQ's SIGTERM handler ends in _shutdown(): a busy worker records the stop, an idle one
    raises StopRequested from the signal handler, wherever the main thread is. If that is
    inside code that swallows exceptions (a log write does), the stop would be lost and the
    worker would run on until systemd's SIGKILL. Recording it first makes the loop stop at
    its next turn either way. (grimbots.logs keeps a log line from the handler itself safe.)
    """

    def _shutdown(self) -> None:
        self._stop_requested = True
        super()._shutdown()


class InProcessWorker(StopRecordedFirst, SimpleWorker):
    pass


class ForkingWorker(StopRecordedFirst, Worker):
    pass


class BatchWorker(InProcessWorker):
    batch_size = BATCH_SIZE

    def execute_job(self, job: Job, queue: Queue) -> None:
        if not self.batch_size > 1 or not batchable(job):
            super().execute_job(job, queue)
            return
        more = self.dequeue_more(queue, self.batch_size - 1)
        batch = [job, *(j for j in more if batchable(j))]
        self.run_batch(batch, queue)
        for other in more:
            if not batchable(other):
                super().execute_job(other, queue)
        self.set_state(WorkerStatus.IDLE)

    def dequeue_more(self, queue: Queue, count: int) -> list[Job]:
        """Up to `count` more jobs from the head of `queue`, moved to its intermediate list
        as RQ's own dequeue does (a crash leaves them there for RQ's cleanup)."""
        with self.connection.pipeline(transaction=False) as pipe:
            for _ in range(count):
                pipe.lmove(queue.key, queue.intermediate_queue_key)
            ids = [i.decode() if isinstance(i, bytes) else i for i in pipe.execute() if i]
        if not ids:
            return []
        jobs = Job.fetch_many(ids, connection=self.connection, serializer=self.serializer)
        return [j for j in jobs if j is not None]

    def run_batch(self, batch: list[Job], queue: Queue) -> None:
        from grimbots.jobs.updates import process_updates

        executions = self.start_jobs(batch, queue)
        started = time.perf_counter()
        try:
            with self.death_penalty_class(
                max(j.timeout or JOB_TIMEOUT_SECONDS for j in batch),
                JobTimeoutException,
                job_id=batch[0].id,
            ):
                results = process_updates([tuple(j.args) for j in batch], [j.id for j in batch])
        except Exception:
            log.warning(
                "batch of %d failed; running its jobs one by one", len(batch), exc_info=True
            )
            for job, execution in zip(batch, executions, strict=True):
                self.perform_started(job, queue, execution)
            return
        self.finish_jobs(batch, executions, results)
        # As @tracked counts a job run alone: each job of the batch took the batch's time.
        elapsed = time.perf_counter() - started
        metrics.JOBS.labels(queue.name, "process_update", "ok").inc(len(batch))
        duration = metrics.JOB_DURATION.labels(queue.name, "process_update")
        for _ in batch:
            duration.observe(elapsed)
        self.log.info("Worker %s: %s: %d jobs OK", self.name, queue.name, len(batch))

    def start_jobs(self, batch: list[Job], queue: Queue) -> list[Execution]:
        """What prepare_execution() and prepare_job_execution() write for one job, for each
        job of the batch, in one transaction."""
        executions = []
        with self.connection.pipeline() as pipe:
            ttl = max(self.get_heartbeat_ttl(job) for job in batch)
            for job in batch:
                execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
                self.executions[execution.id] = execution
                executions.append(execution)
                # (RQ also writes last_heartbeat on its own first; this writes it too.)
                job.prepare_for_execution(self.name, pipeline=pipe)
                pipe.persist(job.key)
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            self.heartbeat(ttl, pipeline=pipe)
            pipe.execute()
        return executions

    def finish_jobs(self, batch: list[Job], executions: list[Execution], results: list) -> None:
        """What handle_job_success() writes for one job (result, finished registry, worker
        stats, execution cleanup), for each job of the batch, in one transaction.
        tests/test_batch_worker.py compares the outcome with RQ's own, field by field."""
        ended = now()
        with self.connection.pipeline() as pipe:
            # The worker's counters once for the batch (RQ adds 1 and each job's time).
            pipe.hincrby(self.key, "successful_job_count", len(batch))
            self.increment_total_working_time(
                sum((ended - job.started_at for job in batch), timedelta()), pipe
            )
            for job, execution, result in zip(batch, executions, results, strict=True):
                job.ended_at = job.last_heartbeat = ended  # save() below writes both
                job._result = result
                job._status = JobStatus.FINISHED
                result_ttl = job.get_result_ttl(self.default_result_ttl)
                if result_ttl != 0:
                    job._handle_success(
                        result_ttl,
                        pipeline=pipe,
                        worker_name=self.name,
                        execution_id=execution.id,
                        execution_started_at=execution.created_at,
                        execution_ended_at=ended,
                    )
                job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.execute()

    def perform_started(self, job: Job, queue: Queue, execution: Execution) -> None:
        """perform_job() for a job start_jobs() already started: run it alone and let RQ
        record its success, or its failure and retry."""
        try:
            with self.death_penalty_class(
                job.timeout or JOB_TIMEOUT_SECONDS, JobTimeoutException, job_id=job.id
            ):
                result = job.perform()
            self._finalize_success(job, queue, execution, result)
        except Exception:
            self._finalize_failure(job, queue, execution, sys.exc_info())


def batchable(job: Job) -> bool:
    """A Telegram update job with none of the RQ features the batch path leaves out
    (callbacks, webhooks, repeats, rate limits). Nothing makes jobs depend on an update."""
    try:
        plain = job.func_name == PROCESS_UPDATE and len(job.args) == 3 and not job.kwargs
    except Exception:  # undeserialisable: RQ's own path reports it
        return False
    return (
        plain
        and job._success_callback_name is None
        and not job.webhooks
        and not job.repeats_left
        and not job.has_rate_limit
    )


WORKER_CLASSES = {"batch": BatchWorker, "simple": InProcessWorker, "fork": ForkingWorker}


def build_worker(settings: Settings, queue_names: list[str], worker_class: str = "batch"):
    unknown = [q for q in queue_names if q not in ALL_QUEUES]
    if unknown:
        raise ValueError(f"unknown queue(s): {', '.join(unknown)}; known: {', '.join(ALL_QUEUES)}")
    services = init_services(settings, worker=True)
    connection = services.redis.raw
    queues = [get_queue(name, connection) for name in queue_names]
    return WORKER_CLASSES[worker_class](
        queues,
        connection=connection,
        name=f"{socket.gethostname()}.{os.getpid()}.{'-'.join(queue_names)}",
    )


def run_worker(
    settings: Settings, queue_names: list[str], burst: bool = False, worker_class: str = "batch"
) -> bool:
    configure_logging(settings.log_level)
    worker = build_worker(settings, queue_names, worker_class)
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
    finally:
        mark_process_dead(os.getpid())
