"""Bad inventory variables stop the play at its first task, with a message naming them,
before anything on the hosts changes (meta/argument_specs.yml and tasks/preflight.yml)."""

import pytest
import yaml
from infra import inventory_groups, output, run_playbook

PHASE1 = "playbooks/phase1-core.yml"


def refused(run, message: str) -> None:
    text = run.stdout + run.stderr
    assert run.returncode != 0, output(run)
    assert message in text, output(run)
    # Nothing changed anywhere: the recap shows changed=0 for every host.
    recap = text[text.rindex("PLAY RECAP") :]
    assert "changed=0" in recap and "changed=1" not in recap, recap


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({"grimbots_rq_workers": {"tasks": 2, "taks": 1}}, "unknown queue names: taks"),
        ({"grimbots_rq_workers": {"gateway": 2}}, "at least one `tasks` worker"),
        (
            {"grimbots_sandbox_services": [{"name": "telegarm", "port": 8081}]},
            "value of name must be one of: telegram, pix, got: telegarm",
        ),
        ({"grimbots_admin_token": "short"}, "the admin token needs at least"),
    ],
    ids=["queue-typo", "no-tasks-worker", "stand-in-typo", "short-admin-token"],
)
def test_bad_app_variables_fail_preflight(extra_vars, message):
    refused(run_playbook(PHASE1, "--limit", "app", extra_vars=extra_vars), message)


def test_redis_without_a_password_is_refused(tmp_path):
    """No redis_requirepass at all (not an empty default): the role's argument spec fails."""
    (name,) = inventory_groups()["redis"]
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {name: {"ansible_connection": "podman_nsenter"}},
                    "children": {"redis": {"hosts": {name: {}}}},
                }
            }
        )
    )
    run = run_playbook(PHASE1, "--limit", "redis", inventory=inventory)
    refused(run, "missing required arguments: redis_requirepass")


def test_short_redis_password_is_refused():
    run = run_playbook(PHASE1, "--limit", "redis", extra_vars={"redis_requirepass": "too-short"})
    refused(run, "redis_requirepass must hold at least 16 characters")
