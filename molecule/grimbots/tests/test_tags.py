"""Every documented tag works alone on the converged scenario, handlers included (a tag
run that changes a setting fires the restart handler, which must not trip over the tasks
the tag skipped). The scenario is left as converged."""

import json

import pytest
from infra import host_in, output, run_playbook, wait_until

PHASE1 = "playbooks/phase1-core.yml"
ENV_FILE = "/etc/grimbots/grimbots.env"


@pytest.fixture(scope="module")
def app():
    return host_in("app")


def healthy(app) -> bool:
    out = app.run("curl -sS -m 5 http://$(hostname -i | cut -d' ' -f1):8000/health")
    try:
        return json.loads(out.stdout)["status"] == "healthy"
    except ValueError:
        return False


@pytest.mark.parametrize("tag", ["grimbots_install", "grimbots_configure", "grimbots_run"])
def test_each_tag_alone_changes_nothing_on_a_converged_host(tag):
    run = run_playbook(PHASE1, "--tags", tag)
    assert run.returncode == 0, output(run)
    recap = run.stdout[run.stdout.rindex("PLAY RECAP") :]
    assert "changed=0" in recap and "failed=0" in recap, recap


def test_configure_tag_alone_fires_the_restart_handler(app):
    pid_before = app.check_output("systemctl show -p MainPID --value grimbots-web.service")
    try:
        run = run_playbook(
            PHASE1, "--tags", "grimbots_configure", extra_vars={"grimbots_log_level": "DEBUG"}
        )
        assert run.returncode == 0, output(run)
        assert "RUNNING HANDLER [grimbots : Restart grimbots app]" in run.stdout, output(run)
        assert 'GRIMBOTS_LOG_LEVEL="DEBUG"' in app.file(ENV_FILE).content_string
        pid_after = app.check_output("systemctl show -p MainPID --value grimbots-web.service")
        assert pid_after != pid_before
        wait_until(lambda: healthy(app), 60, "/health healthy after the tag's restart")
    finally:
        # Back to the converged settings, through the same tag, whatever failed above.
        run = run_playbook(PHASE1, "--tags", "grimbots_configure")
    assert run.returncode == 0, output(run)
    assert 'GRIMBOTS_LOG_LEVEL="INFO"' in app.file(ENV_FILE).content_string
    wait_until(lambda: healthy(app), 60, "/health healthy again")
