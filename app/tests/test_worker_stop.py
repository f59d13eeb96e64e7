"""SIGTERM (systemd's stop) is RQ's warm shutdown: the worker finishes its job and exits,
even when the signal lands while the worker is writing a log line.

Seen in the lab: the journal socket was full, the worker's write to stderr waited, SIGTERM
interrupted it, and RQ's handler logged into the same stream. The nested write raised
RuntimeError out of the handler before it recorded the stop; the worker ran on until
systemd's SIGKILL 75 s later, and the app's restart (web included) waited for it. Here the
worker's output goes to a pipe nobody reads until the signal is sent, so every write waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

from grimbots.lab.servers import GRIMBOTS, wait_until
from rq import Queue

JOBS = 20_000


def test_a_stop_that_lands_in_a_log_write_still_stops_the_worker(env, redis_client):
    queue = Queue("tasks", connection=redis_client)
    worker = subprocess.Popen(
        [GRIMBOTS, "worker", "tasks", "--worker-class", "simple"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    drained: list[bytes] = []
    try:
        with redis_client.pipeline() as pipe:
            queue.enqueue_many(
                [Queue.prepare_data("builtins.len", args=("x",)) for _ in range(JOBS)],
                pipeline=pipe,
            )
            pipe.execute()
        # Each job logs a few lines: the unread pipe fills, and the worker waits in a write.
        counts: list[int] = []

        def stuck() -> bool:
            counts.append(queue.count)
            return len(counts) > 10 and counts[-1] == counts[-10] and counts[-1] < JOBS

        wait_until(stuck, timeout=60, what="the worker to wait on its full output pipe")
        os.kill(worker.pid, signal.SIGTERM)
        reader = threading.Thread(target=lambda: drained.extend(worker.stdout), daemon=True)
        reader.start()
        worker.wait(20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    output = b"".join(drained).decode(errors="replace")
    assert worker.returncode == 0, output[-3000:]
    assert "reentrant call" not in output, output[-3000:]
    assert "stopping on request" in output, output[-3000:]
    # It stopped after the job in hand, not after working through the queue.
    assert queue.count > JOBS // 2
