"""Turning the PSP off with a settings change (the configure and run tags, as an operator
would): the PIX settings leave the environment file, the PSP reconciliation timer is
stopped and removed, and /health says no PSP is configured. The scenario is converged back
with its PSP at the end. (A fresh install without a PSP, the role's defaults, is
molecule/monitoring's app host, where its tests check the same and the maintenance sweep.)"""

import json

import pytest
from infra import host_in, output, run_playbook, wait_until

PHASE1 = "playbooks/phase1-core.yml"
SETTINGS = ("--limit", "app", "--tags", "grimbots_configure,grimbots_run")
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
    run = run_playbook(PHASE1, *SETTINGS)
    assert run.returncode == 0, output(run)
    assert host.service("grimbots-reconcile.timer").is_running


def health(app) -> dict:
    out = app.run("curl -sS -m 5 http://$(hostname -i | cut -d' ' -f1):8000/health")
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {}


def test_turning_the_psp_off_removes_its_settings_and_timer(app):
    assert app.file("/etc/systemd/system/grimbots-reconcile.timer").exists
    run = run_playbook(PHASE1, *SETTINGS, extra_vars=NO_PSP)
    assert run.returncode == 0, output(run)
    assert "GRIMBOTS_PIX_" not in app.file("/etc/grimbots/grimbots.env").content_string
    assert not app.file("/etc/systemd/system/grimbots-reconcile.timer").exists
    assert app.check_output("systemctl is-active grimbots-reconcile.timer || true") != "active"
    report = wait_until(lambda: health(app).get("status") == "healthy" and health(app), 60, "up")
    assert report["checks"]["pix"] == {"configured": False, "provider": None}
