"""The load generator (loadtest/run.py) in the background while a test breaks something.

`Load` runs the fixed-rate and retry stages against a scenario's published front door,
gated on the fail ratio only (the scenario shares two cores with the other test lanes, so
latency is the neighbours'); `audit()` then reconciles what it sent with what the stack did
(playbooks/loadtest-audit.yml: 0 lost, 0 duplicated). The sent log has one line per
answered request, with the time of its answer ("at"), so a test can measure a gap.
"""

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra import PROJECT, wait_until


class Load:
    """loadtest/run.py through `front`, two stages of `stage_seconds` each: `rate` then
    half of it with re-sent updates. Used as a context manager: __enter__ returns once the
    first answers are in; `finish()` waits for the end and asserts the run passed."""

    def __init__(
        self,
        front: str,
        psp: str,
        bots: list[dict],
        reports: Path,
        *,
        stage_seconds: int,
        # Enough to keep requests in flight through whatever a test breaks; capacity is
        # the benchmarks' business (docs/benchmarks.md), and the lanes share two cores.
        rate: int = 20,
        max_fail_ratio: float = 0.0,
    ):
        self.reports = reports
        reports.mkdir(parents=True, exist_ok=True)
        bots_file = reports / "bots.json"
        bots_file.write_text(json.dumps(bots))
        self.command = [
            sys.executable,
            str(PROJECT / "loadtest" / "run.py"),
            "--host", front,
            "--psp", psp,
            "--bots", str(bots_file),
            "--reports", str(reports),
            "--ramp",  # no think-time stages: a steady rate, so a gap shows
            "--stage-seconds", str(stage_seconds),
            "--rate", str(rate),
            "--retry-rate", str(rate // 2),
            "--max-fail-ratio", str(max_fail_ratio),
            "--failures-only",
            "--no-audit",  # audit() runs it, after the test's own checks
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None
        self.output = ""

    def __enter__(self) -> "Load":
        self.log = open(self.reports / "run.log", "w")  # closed in finish()
        # A session of its own: on a failed test __exit__ stops run.py and its locust child
        # together (a locust left behind kept writing into the next test's figures).
        self.process = subprocess.Popen(
            self.command,
            cwd=PROJECT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        wait_until(lambda: len(self.sent()) >= 20 or self.process.poll() is not None, 60, "load")
        assert self.process.poll() is None, self.read_output()
        return self

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def read_output(self) -> str:
        self.log.flush()
        return (self.reports / "run.log").read_text()

    def wrap_up(self, timeout: float = 900) -> str:
        """The event under test is over: end the running stage now, run the retry stage
        briefly (loadtest/run.py's SIGUSR1), then finish()."""
        assert self.running(), "the load ended before the event under test did"
        self.process.send_signal(signal.SIGUSR1)
        return self.finish(timeout)

    def finish(self, timeout: float = 900) -> str:
        """Wait for the run to end; it must pass (its gates: the fail ratio). Its output."""
        assert self.process is not None
        self.process.wait(timeout)
        self.log.close()
        self.output = (self.reports / "run.log").read_text()
        print(self.output[-3000:])  # the stages' table, for the CI log
        assert self.process.returncode == 0, self.output[-4000:]
        return self.output

    def sent(self) -> list[dict]:
        path = self.reports / "sent.jsonl"
        if not path.exists():
            return []
        # The last line may be half written.
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for row in self.sent():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    def answered_since(self, since: float) -> int:
        """Requests answered 200 from `since` (a Unix time) on."""
        return sum(1 for row in self.sent() if row["status"] == 200 and row["at"] >= since)

    def answer_gap(self, since: float) -> float:
        """The longest time without an accepted webhook (HTTP 200) from `since` on, in
        seconds (wall clock, as the log's "at"); infinite if none was accepted after it."""
        times = sorted(row["at"] for row in self.sent() if row["status"] == 200)
        after = [t for t in times if t >= since]
        if not after:
            return math.inf
        gaps = [after[0] - since] + [b - a for a, b in itertools.pairwise(after)]
        return max(gaps)


def audit(reports: Path, drain_timeout: int = 600) -> str:
    """The zero-duplication audit of a Load's run, on the scenario's first app host; it must
    report 0 lost, 0 duplicated. Its report."""
    run = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent),
            str(PROJECT / "playbooks" / "loadtest-audit.yml"),
            "-e",
            f"loadtest_sent={reports / 'sent.jsonl'}",
            "-e",
            f"loadtest_report={reports / 'audit.txt'}",
            "-e",
            f"loadtest_drain_timeout={drain_timeout}",
            "-e",
            f"loadtest_run={reports.name} at {time.strftime('%H:%M:%S')}",
        ],
        cwd=PROJECT,
        env=dict(os.environ, ANSIBLE_ROLES_PATH=str(PROJECT / "roles"), ANSIBLE_NOCOLOR="1"),
        capture_output=True,
        text=True,
        check=False,
    )
    report = (reports / "audit.txt").read_text() if (reports / "audit.txt").exists() else ""
    print(report)
    assert run.returncode == 0, report + run.stdout[-3000:] + run.stderr[-2000:]
    assert "OK, 0 lost, 0 duplicated" in report, report
    return report
