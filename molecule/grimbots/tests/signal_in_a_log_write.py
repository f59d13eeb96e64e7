"""Run on the app host by test_grimbots.py (grimbots-manage --exec python): a real
`grimbots worker`, on Redis database 15 so the fleet never sees its jobs, whose output goes
to a pipe nobody reads until SIGTERM has been sent, so the worker waits inside a log write
when the signal lands. Prints one JSON line: exit code, jobs left, what it printed.

The signal goes to the worker's main thread (tgkill): with kill() the kernel may pick
another of its threads, and Python then runs the handler only once the write is done.
On Debian 12's Python (3.11.2) RQ's handler, which logs, then hits the busy stream.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time

import redis
from rq import Queue

JOBS = 20_000

url = os.environ["GRIMBOTS_REDIS_URL"].rsplit("/", 1)[0] + "/15"
env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
env["GRIMBOTS_REDIS_URL"] = url
connection = redis.Redis.from_url(url)


def clear() -> None:
    # FLUSHDB is not granted to the app's Redis user.
    for keys in iter(lambda: connection.scan(0, count=5000)[1], []):
        connection.delete(*keys)


clear()
queue = Queue("tasks", connection=connection)
worker = subprocess.Popen(
    [os.path.join(sys.prefix, "bin", "grimbots"), "worker", "tasks", "--worker-class", "simple"],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
)
drained: list[bytes] = []
try:
    with connection.pipeline() as pipe:
        queue.enqueue_many(
            [Queue.prepare_data("builtins.len", args=("x",)) for _ in range(JOBS)], pipeline=pipe
        )
        pipe.execute()
    # Each job logs a few lines: the unread pipe fills and the worker waits in a write.
    counts = [queue.count]
    deadline = time.monotonic() + 60
    while not (len(counts) > 10 and counts[-1] == counts[-10] < JOBS):
        assert time.monotonic() < deadline, "the worker never waited on its output"
        time.sleep(0.1)
        counts.append(queue.count)
    ctypes.CDLL(None, use_errno=True).tgkill(worker.pid, worker.pid, signal.SIGTERM)
    threading.Thread(target=lambda: drained.extend(worker.stdout), daemon=True).start()
    try:
        worker.wait(20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)
    left = queue.count
finally:
    if worker.poll() is None:
        worker.kill()
    clear()
output = b"".join(drained).decode(errors="replace")
print(json.dumps({"returncode": worker.returncode, "jobs_left": left, "output": output[-4000:]}))
