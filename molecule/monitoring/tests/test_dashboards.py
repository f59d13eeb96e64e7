"""The provisioned dashboards: linted here, and every panel's PromQL run against this
scenario's Prometheus (only the queries whose exporters exist here; the stack scenario
runs them all)."""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import dashboards
from infra import host_in, inventory_groups, measure, private_address, wait_until

# Exporters this scenario runs (no PostgreSQL, PgBouncer, HAProxy or pgBackRest here).
AVAILABLE = {"grimbots", "node", "redis", "sentinel", "prometheus", "alertmanager"}


def test_every_dashboard_passes_the_linter():
    found = dashboards.load()
    assert found, f"no dashboard in {dashboards.DASHBOARDS}"
    problems = [p for dashboard in found.values() for p in dashboards.lint(dashboard)]
    assert problems == []


def test_the_linter_finds_what_it_must():
    bad = {
        "title": "bad",
        "templating": {"list": []},
        "panels": [
            {
                "id": 1,
                "type": "timeseries",
                "title": "t",
                "datasource": {"uid": "prometheus"},
                "targets": [{"refId": "A", "expr": "rate(up[5m]) + node_load1"}],
            }
        ],
    }
    text = "\n".join(dashboards.lint(bad))
    for expected in (
        "datasource variable",
        "'instance' query variable",
        "no uid",
        "title and a description",
        "not the ${datasource} variable",
        "no unit",
        "not $__rate_interval",
        "node_load1 is used without matchers",
        "up is used without matchers",
    ):
        assert expected in text, f"lint missed {expected!r}:\n{text}"


@pytest.fixture(scope="module")
def prometheus_url():
    """Prometheus as published on the controller's 127.0.0.1."""
    name = inventory_groups()["monitoring"][0]
    out = subprocess.run(
        ["podman", "port", name, "9090"], capture_output=True, text=True, check=True
    ).stdout
    return f"http://{out.strip().splitlines()[0]}"


@pytest.fixture(scope="module")
def traffic():
    """One /start update through the app: a job runs and a message is sent, so the job and
    send counters exist (they appear with their first sample)."""
    app = host_in("app")
    ip = private_address(app)
    # The credentials on stdin, as the CLI requires (never on a command line).
    credentials = shlex.quote(
        json.dumps({"token": "100000001:monitoring-bot", "secret": "monitoring-webhook-secret"})
    )
    bot = json.loads(
        app.check_output(
            f"echo {credentials} | grimbots-manage bots add --name monitoring "
            "--credentials - --welcome Hello"
        )
    )
    now = int(time.time())
    update = {
        "update_id": now,
        "message": {
            "message_id": 1,
            "date": now,
            "chat": {"id": 4242, "type": "private"},
            "from": {"id": 4242, "is_bot": False, "first_name": "Monitoring"},
            "text": "/start",
        },
    }
    post = [
        "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
        "-H", "Content-Type: application/json",
        "-H", "X-Telegram-Bot-Api-Secret-Token: monitoring-webhook-secret",
        "--data-binary", json.dumps(update),
        f"http://{ip}:8000/webhook/telegram/{bot['id']}",
    ]  # fmt: skip
    assert app.check_output(shlex.join(post)) == "200"


def test_every_panel_query_returns_data(prometheus_url, traffic):
    selected = dashboards.with_sources(dashboards.queries(dashboards.load()), AVAILABLE)
    assert len(selected) >= 20, f"only {len(selected)} queries have their exporters here"

    def empty():
        results = dashboards.run_queries(prometheus_url, selected)
        missing = [r for r in results if r.series == 0]
        return results, missing

    # Rates need two samples and the counters need a job run (the e2e test posts one).
    wait_until(lambda: not empty()[1], 90, "every selected panel query to return data", 2)
    results, missing = empty()
    assert not missing, [(r.query.name, r.error) for r in missing]
    skipped = len(dashboards.queries(dashboards.load())) - len(selected)
    measure("dashboard_queries_with_data", len(results))
    measure("dashboard_queries_skipped_no_exporter", skipped)


def test_a_wrong_query_is_caught(prometheus_url):
    query = dashboards.Query("t", "p", "A", 'grimbots_no_such_metric{job="grimbots"}')
    broken = dashboards.Query("t", "p", "B", "sum(rate(up[1m])")
    results = dashboards.run_queries(prometheus_url, [query, broken])
    assert results[0].series == 0 and results[0].error is None
    assert results[1].error and "parse error" in results[1].error
