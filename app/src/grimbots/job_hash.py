"""Build an RQ job hash without a Job object per request.

rq.Job.create() plus to_dict() costs about 50 us of CPU per call, and sending its ~20
fields as script arguments cost far more in redis-py's command packing. Every field
except the call data, the description and two timestamps is the same for all updates,
so we take them once from a real Job's to_dict() (and bake them into the Lua script),
and per request only serialise the call with the serializer and compression RQ uses
(Job.data, then zlib in to_dict). tests/test_job_hash.py compares the result with RQ's
own output, so an RQ upgrade that changes the format fails a test, not the workers.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

from redis import Redis
from rq.job import Job, JobStatus

from grimbots.queues import (
    FAILURE_TTL_SECONDS,
    JOB_TIMEOUT_SECONDS,
    RESULT_TTL_SECONDS,
    UPDATE_RETRY,
)

PER_JOB_FIELDS = ("created_at", "enqueued_at", "data", "description")


class JobHashBuilder:
    def __init__(self, func_name: str, queue_name: str):
        self.func_name = func_name
        self.queue_name = queue_name
        template = self.reference_job(args=(), job_id="template", description="template")
        self._serializer = template.serializer
        self.constant_fields: dict[str, str] = {}
        for key, value in template.to_dict().items():
            if key in PER_JOB_FIELDS or value is None:
                continue
            # As redis-py would send it: str as is (JobStatus is a str), numbers via str().
            self.constant_fields[key] = value if isinstance(value, str) else str(value)
        self.constant_fields["status"] = str(JobStatus.QUEUED.value)

    def reference_job(self, args: tuple, job_id: str, description: str) -> Job:
        """A real queued rq Job with our defaults (also used by tests as the reference)."""
        # Job.create needs a connection object but does no I/O with it.
        job = Job.create(
            self.func_name,
            args=args,
            connection=Redis(),
            id=job_id,
            origin=self.queue_name,
            description=description,
            timeout=JOB_TIMEOUT_SECONDS,
            result_ttl=RESULT_TTL_SECONDS,
            failure_ttl=FAILURE_TTL_SECONDS,
        )
        # A job whose worker was SIGKILLed is "abandoned"; RQ re-runs it only if it has
        # retries left (StartedJobRegistry.cleanup), and re-running an update is safe.
        job.retries_left = UPDATE_RETRY.max
        job.retry_intervals = UPDATE_RETRY.intervals
        job._status = JobStatus.QUEUED  # what Queue._prepare_for_queue sets
        return job

    @staticmethod
    def timestamp(when: datetime | None = None) -> str:
        """rq.utils.utcformat(now), a little cheaper: 2026-01-31T12:00:00.000000Z."""
        return (when or datetime.now(UTC)).isoformat(timespec="microseconds")[:-6] + "Z"

    def data(self, args: tuple) -> bytes:
        """The job's `data` field: the call (func, instance, args, kwargs) as RQ stores it.

        A standard zlib stream that RQ's zlib.decompress() reads back. zlib.compress() with
        default settings allocates ~300 KB of state per call, which dominated this
        function; a 512-byte window and the smallest memLevel suit our ~300-byte payloads.
        """
        compressor = zlib.compressobj(6, zlib.DEFLATED, 9, 1)
        pickled = self._serializer.dumps((self.func_name, None, args, {}))
        return compressor.compress(pickled) + compressor.flush()

    def lua_table_items(self) -> str:
        """The constant fields as Lua table items: "k1", "v1", "k2", "v2", ..."""
        return ", ".join(
            _lua_string(part) for pair in self.constant_fields.items() for part in pair
        )


def _lua_string(text: str) -> str:
    # Decimal escapes for anything but plain printable ASCII: always a valid Lua literal.
    return (
        '"'
        + "".join(
            c if (" " <= c <= "~" and c not in '"\\') else "".join(f"\\{b:03d}" for b in c.encode())
            for c in text
        )
        + '"'
    )
