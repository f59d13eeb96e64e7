"""The short load test against this scenario's stack: loadtest/run.py --short from the
controller (through the published ports), one worker SIGKILLed during the fixed-rate
stage, then the zero-duplication audit on the app host. Keeps the load scripts and the
audit from rotting: `make loadtest` runs the same code, longer, against the lab.

Gated on correctness only (no failed request, 0 lost, 0 duplicated): latency is a
benchmark's figure (`make loadtest`, docs/benchmarks.md), and here the scenario shares the
two cores with the other test lanes, so a P95 bar would measure the neighbours."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from infra import host_in, inventory_groups, published

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def app():
    return host_in("app")


def test_short_load_with_a_worker_kill_loses_and_duplicates_nothing(app, tmp_path):
    seeded = app.check_output("/usr/local/sbin/grimbots-manage bots seed --count 5")
    bots = tmp_path / "bots.json"
    bots.write_text(json.dumps(json.loads(seeded)["bots"]))
    reports = tmp_path / "reports"
    container = inventory_groups()["app"][0]
    command = [
        sys.executable,
        str(ROOT / "loadtest" / "run.py"),
        "--short",
        "--host",
        published(container, 8000),
        "--psp",
        published(container, 8082),
        "--bots",
        str(bots),
        "--inventory",
        os.environ["MOLECULE_INVENTORY_FILE"],
        "--reports",
        str(reports),
        "--chaos",
        "--chaos-every",
        "4",
        "--chaos-kills",
        "1",
        "--no-chaos-restart-web",
        "--drain-timeout",
        "600",
        "--max-fail-ratio",
        "0",
        "--failures-only",
    ]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    print(run.stdout[-6000:])  # the summary table and the audit, for the CI log
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "kill -9 worker: " in run.stdout, "the chaos step killed no worker"
    audit = (reports / "audit.txt").read_text()
    assert "OK, 0 lost, 0 duplicated" in audit
    sent = (reports / "sent.jsonl").read_text().splitlines()
    assert len(sent) >= 500 and any(json.loads(line)["retry"] for line in sent)
