"""Run tasks in a local podman container through its namespaces (nsenter).

`podman exec` starts conmon and runc for every command: about 0.15 s on an idle box and
seconds on a loaded one, and Ansible pays it two or three times per task. Entering the
container's namespaces from the host costs a few milliseconds, and the module's code goes
over stdin (pipelining), so a task is one process. For the lab and the Molecule
scenarios, where the controller is the containers' host and runs as root; real servers
are reached over SSH.
"""

import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
name: podman_nsenter
short_description: Run tasks in a local podman container through nsenter
description:
  - Finds the container's main process with C(podman inspect) and runs each command in
    its mount, UTS, IPC, network, PID and cgroup namespaces with C(nsenter), with the
    environment a C(podman exec) would give, not the controller's.
  - Needs root on the containers' host (rootful podman).
options:
  remote_addr:
    description: The container's name or id.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
"""

# What `podman exec` gives a command in these images: none of the controller's variables
# (GRIMBOTS_*, ANSIBLE_*, VIRTUAL_ENV) may leak into the hosts' commands.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "container": "podman",
}


def in_container(pid: int, command) -> list:
    """The host's argv that runs a shell command in the namespaces of process `pid`."""
    namespaces = ["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"]
    return ["nsenter", f"--target={pid}", *namespaces, "--", "/bin/sh", "-c", command]


def container_pid(name: str) -> int:
    """The host's PID of a running container's first process."""
    found = subprocess.run(
        ["podman", "inspect", "--type", "container", "--format", "{{.State.Pid}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    pid = found.stdout.strip()
    if found.returncode != 0 or not pid.isdigit() or pid == "0":
        raise AnsibleConnectionFailure(f"container {name} is not running: {found.stderr.strip()}")
    return int(pid)


class Connection(ConnectionBase):
    transport = "podman_nsenter"
    has_pipelining = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pid = None

    def _connect(self):
        if not self._connected:
            self._pid = container_pid(self.get_option("remote_addr"))
            self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        done = subprocess.run(
            in_container(self._pid, cmd), input=in_data, capture_output=True, env=CONTAINER_ENV
        )
        return done.returncode, done.stdout, done.stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as source:
            rc, _, err = self.exec_command(f"cat > {shlex.quote(out_path)}", in_data=source.read())
        if rc != 0:
            raise AnsibleError(f"failed to write {out_path}: {err.decode(errors='replace')}")

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        rc, data, err = self.exec_command(f"cat {shlex.quote(in_path)}")
        if rc != 0:
            raise AnsibleError(f"failed to read {in_path}: {err.decode(errors='replace')}")
        with open(out_path, "wb") as target:
            target.write(data)

    def close(self):
        self._connected = False
