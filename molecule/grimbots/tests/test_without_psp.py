"""The role's defaults deploy without a PSP: the converge passes with every grimbots_pix_*
variable empty, there is no PSP reconciliation timer, and the always-on maintenance sweep
still runs. The scenario is converged back with its PSP at the end."""

import json
import time

import pytest
from infra import host_in, output, run_playbook, wait_until

PHASE1 = "playbooks/phase1-core.yml"
NO_PSP = {
    name: ""
    for name in (
        "grimbots_pix_base_url",
        "grimbots_pix_client_id",
        "grimbots_pix_client_secret",
        "grimbots_pix_key",
        "grimbots_pix_webhook_secret",
        "grimbots_pix_webhook_url",
    )
}


@pytest.fixture(scope="module")
def app():
    host = host_in("app")
    yield host
    run = run_playbook(PHASE1, "--limit", "app")
    assert run.returncode == 0, output(run)
    assert host.service("grimbots-reconcile.timer").is_running


def health(app) -> dict:
    out = app.run("curl -sS -m 5 http://$(hostname -i | cut -d' ' -f1):8000/health")
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {}


def test_converges_without_a_psp(app):
    run = run_playbook(PHASE1, "--limit", "app", extra_vars=NO_PSP)
    assert run.returncode == 0, output(run)
    assert "GRIMBOTS_PIX_" not in app.file("/etc/grimbots/grimbots.env").content_string
    assert not app.file("/etc/systemd/system/grimbots-reconcile.timer").exists
    assert app.check_output("systemctl is-active grimbots-reconcile.timer || true") != "active"
    report = wait_until(lambda: health(app).get("status") == "healthy" and health(app), 60, "up")
    assert report["checks"]["pix"] == {"configured": False, "provider": None}


def test_maintenance_sweep_runs_without_a_psp(app):
    assert app.service("grimbots-maintenance.timer").is_enabled
    assert app.service("grimbots-maintenance.timer").is_running
    since = time.time()
    app.check_output("systemctl start grimbots-maintenance.service")
    props = app.check_output(
        "systemctl show -p Result -p ExecMainStatus grimbots-maintenance.service"
    )
    assert "Result=success" in props and "ExecMainStatus=0" in props, props
    # It swept, or the timer's run of this same minute had (one sweep per minute).
    assert health(app)["checks"]["maintenance"]["last_run_seconds_ago"] <= 65
    swept = json.loads(app.check_output("grimbots-manage maintenance --force"))
    assert swept["swept"] is True and "failed jobs requeued" in swept, swept
    assert health(app)["checks"]["maintenance"]["last_run_seconds_ago"] <= time.time() - since + 1
