"""Helpers shared by the Molecule scenarios' testinfra tests.

Hosts come from Molecule's inventory but are reached by entering the container's
namespaces (nsenter, as plugins/connection/podman_nsenter.py does for Ansible): a few
milliseconds a command, where testinfra's podman backend (`podman exec`) takes 0.15 s on
an idle box and seconds on a loaded one, and its ansible backend about 2 s.
"""

import functools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import testinfra.host
import yaml
from testinfra.backend.base import BaseBackend, CommandResult

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "plugins" / "connection"))
from podman_nsenter import CONTAINER_ENV, container_pid, in_container  # noqa: E402


class NsenterBackend(BaseBackend):
    """testinfra's commands run in a local container's namespaces."""

    NAME = "nsenter"

    def __init__(self, name: str, *args, **kwargs):
        self.name = name
        super().__init__(name, *args, **kwargs)

    def run(self, command: str, *args: str, **kwargs) -> CommandResult:
        cmd = self.get_command(command, *args)
        # Looked up each time (about 30 ms): a test may restart the container.
        pid = container_pid(self.name)
        done = subprocess.run(
            in_container(pid, cmd), capture_output=True, env=CONTAINER_ENV, check=False
        )
        return self.result(done.returncode, self.encode(cmd), done.stdout, done.stderr)


@functools.cache
def container(name: str) -> testinfra.host.Host:
    """A testinfra host for one of the scenario's containers."""
    return testinfra.host.Host(NsenterBackend(name))


def private_address(host) -> str:
    """A container's address on the scenario's network (its eth0)."""
    return host.check_output("ip -4 -o addr show dev eth0").split()[3].split("/")[0]


# The app host's units, for a failed test's report (quoted: journal() passes them through a
# shell).
APP_JOURNALS = [
    "grimbots-web",
    "'rq-worker@*'",
    "'grimbots-sandbox@*'",
    "grimbots-health-alert",
    "grimbots-reconcile",
]


def inventory_groups() -> dict[str, list[str]]:
    """Group name -> container names, from the inventory Molecule wrote for this run."""
    inventory = yaml.safe_load(Path(os.environ["MOLECULE_INVENTORY_FILE"]).read_text())
    groups: dict[str, list[str]] = {}

    def walk(name: str, node: dict) -> None:
        node = node or {}
        groups.setdefault(name, []).extend(node.get("hosts") or {})
        for child, sub in (node.get("children") or {}).items():
            walk(child, sub)

    for name, node in inventory.items():
        walk(name, node)
    return groups


def host_in(group: str):
    """The first host of an inventory group."""
    names = inventory_groups().get(group)
    if not names:
        raise LookupError(f"no host in group {group!r} of {os.environ['MOLECULE_INVENTORY_FILE']}")
    return container(names[0])


def measure(name: str, value) -> None:
    """A figure for the CI log and docs/benchmarks.md (verifier option -s shows it)."""
    print(f"\nMEASURE {name}={value}")


def published(container: str, port: int) -> str:
    """The controller's URL for a port a scenario publishes on a random port of 127.0.0.1
    (its molecule.yml's published_ports): what a load generator on the controller uses."""
    out = subprocess.run(
        ["podman", "port", container, f"{port}/tcp"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out and out[0].startswith("127.0.0.1:"), f"{port} is not published on 127.0.0.1"
    return f"http://{out[0]}"


def run_playbook(
    playbook: str | Path, *args: str, extra_vars: dict | None = None, inventory: Path | None = None
):
    """ansible-playbook against this scenario's inventory (or `inventory`): the
    CompletedProcess, whatever its exit code (the caller asserts). `playbook` is relative
    to the project, or absolute."""
    inventory = inventory or Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    command = ["ansible-playbook", "-i", str(inventory), str(PROJECT / playbook), *args]
    if extra_vars:
        command += ["-e", json.dumps(extra_vars)]
    return subprocess.run(
        command,
        env=dict(
            os.environ,
            ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_NOCOLOR="1",
        ),
        capture_output=True,
        text=True,
        check=False,
    )


def output(run) -> str:
    """What failed (ansible-core 2.19 prints a failed task on stderr, anywhere in it), then
    the end of a playbook run's output, for an assertion message."""
    failed = [
        line[:1500]
        for line in (run.stdout + run.stderr).splitlines()
        if line.startswith(("fatal: ", "failed: ", "ERROR! ")) or "FAILED! =>" in line
    ]
    return "\n".join(failed[-10:]) + "\n...\n" + run.stdout[-4000:] + run.stderr[-2000:]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval=0.2):
    """Poll condition() until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def journal(host, units: list[str], lines: int = 60) -> str:
    args = " ".join(f"-u {u}" for u in units)
    return host.run(f"journalctl {args} -n {lines} --no-pager -o short-precise").stdout


def attach_journal_on_failure(item, report, units_by_group: dict[str, list[str]]) -> None:
    """On a failed test, add the units' journals to the report so CI logs show why."""
    if report.when != "call" or not report.failed:
        return
    for group, units in units_by_group.items():
        try:
            text = journal(host_in(group), units)
        except Exception as exc:  # the report must not hide the original failure
            text = f"(journal unavailable: {exc})"
        report.sections.append((f"journal of {group}: {' '.join(units)}", text))


def play_recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counts per host: {"host": {"ok": 3, "changed": 0, ...}}."""
    recap: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[1].splitlines():
        host, sep, counts = line.partition(" : ")
        if sep and "changed=" in counts:
            recap[host.strip()] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return recap


def rerun_playbook(playbook: Path, *args: str) -> dict[str, dict[str, int]]:
    """Run `playbook` again on this scenario's hosts; it must pass. Its PLAY RECAP.

    For "a re-run after <some event> changes nothing": Molecule's own idempotence step only
    runs right after converge.
    """
    run = run_playbook(playbook, *args)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return play_recap(run.stdout)
