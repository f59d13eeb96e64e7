"""Where the CPU went during a load-test stage: per lab container and, inside each, per
program (gunicorn, the RQ workers, HAProxy, redis-server, postgres...), plus the load
generator itself (the caller adds it), in cores (CPU seconds per second of the stage).

Read from the host's /proc for every process of each container's cgroup (cgroup v1 or v2,
as podman set it up), so it needs root and local containers: the lab, not real servers.
Processes that start and end within the stage are missed; every long-lived one is counted.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections import Counter
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
# A process's program, as the table names it: the first word of its command line that is
# not an interpreter, cut to its base name (gunicorn, grimbots worker, redis-server...).
INTERPRETERS = {"python3", "python3.11", "python", "sh", "bash"}


def lab_containers(label: str = "grimbots.lab=true") -> dict[str, int]:
    """Running lab containers: name -> the host PID of their first process."""
    out = subprocess.run(
        ["podman", "ps", "--filter", f"label={label}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    pids = {}
    for name in out:
        pid = subprocess.run(
            ["podman", "inspect", "--type", "container", "--format", "{{.State.Pid}}", name],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if pid.isdigit() and pid != "0":
            pids[name] = int(pid)
    return pids


def _cgroup_procs(pid: int) -> list[int]:
    """Every process in the cgroup of `pid` (its cpuacct hierarchy on v1, the unified one
    on v2), sub-cgroups included."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    by_controller = {line.split(":")[1]: line.split(":", 2)[2] for line in lines}
    rel = by_controller.get("cpu,cpuacct") or by_controller.get("cpuacct") or by_controller[""]
    # The container's own root, not the init.scope its PID 1 may sit in.
    rel = rel.removesuffix("/init.scope")
    mount = "/sys/fs/cgroup/cpuacct" if "cpuacct" in by_controller else "/sys/fs/cgroup"
    procs: list[int] = []
    for path in Path(mount + rel).rglob("cgroup.procs"):
        procs += [int(p) for p in path.read_text().split()]
    return procs


def _program(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    names = [os.path.basename(w.decode(errors="replace")) for w in words if w]
    for i, name in enumerate(names):
        if name not in INTERPRETERS and not name.startswith("-"):
            # The app's one command: name its subcommand too (worker, sandbox...).
            if name == "grimbots" and i + 1 < len(names):
                return f"grimbots {names[i + 1]}"
            return name.split(":")[0]
    return "?"


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def sample(containers: dict[str, int]) -> dict[int, tuple]:
    """pid -> (container, program, CPU ticks so far)."""
    found = {}
    for name, first in containers.items():
        try:
            pids = _cgroup_procs(first)
        except (OSError, KeyError):
            continue
        for pid in pids:
            found[pid] = (name, _program(pid), _cpu_ticks(pid))
    return found


class StageCpu:
    """Sample at the start and the end of a stage; report() gives the table."""

    def __init__(self) -> None:
        self.containers = lab_containers()
        self.before: dict[int, tuple] = {}
        self.started = 0.0

    def start(self) -> None:
        self.before = sample(self.containers)
        self.children = _children_cpu()
        self.started = time.monotonic()

    def stop(self) -> Counter:
        """Cores used per (container, program) since start(), and by this process's
        children that ended meanwhile (the load generator)."""
        after = sample(self.containers)
        seconds = max(time.monotonic() - self.started, 1e-6)
        used: Counter = Counter()
        for pid, (name, program, ticks) in after.items():
            base = self.before[pid][2] if pid in self.before else 0
            used[(name, program)] += (ticks - base) / TICKS / seconds
        used[("controller", "load generator")] = (_children_cpu() - self.children) / seconds
        return used


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def report(used: Counter, top: int = 12) -> str:
    """The busiest (container, program) pairs and each container's total, in cores."""
    per_container: Counter = Counter()
    for (name, _), cores in used.items():
        per_container[name] += cores
    lines = [f"    CPU (cores): all {sum(used.values()):.2f}"]
    lines += [f"      {name:<28} {cores:5.2f}" for name, cores in per_container.most_common()]
    lines.append("    busiest programs:")
    lines += [
        f"      {name:<28} {program:<22} {cores:5.2f}"
        for (name, program), cores in used.most_common(top)
        if cores >= 0.01
    ]
    return "\n".join(lines)
