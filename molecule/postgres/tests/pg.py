"""Helpers of the postgres scenario's tests: the hosts, psql on them, ansible-playbook."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from infra import container, inventory_groups

ROOT = Path(__file__).resolve().parents[3]
APP_PASSWORD = "molecule-app-password-0123"
REPLICATION_PASSWORD = "molecule-replication-password"


def hosts() -> dict:
    """primary, replica and client, and their container names."""
    groups = inventory_groups()
    names = {
        "primary": next(n for n in groups["postgres"] if n.endswith("-pg-primary")),
        "replica": next(n for n in groups["postgres"] if n.endswith("-pg-replica")),
        "client": groups["app"][0],
    }
    return {role: container(name) for role, name in names.items()} | {"names": names}


def sql(host, query: str, port: int = 5432, db: str = "grimbots"):
    """psql as the superuser over the host's local socket; the command's result."""
    return host.run(
        f"runuser -u postgres -- psql -X -A -t -q -v ON_ERROR_STOP=1 -p {port} -d {db} "
        f"-c {shlex.quote(query)}"
    )


def value(host, query: str, **kwargs) -> str:
    out = sql(host, query, **kwargs)
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def app_login(
    client,
    server: str,
    password: str = APP_PASSWORD,
    port: int = 5432,
    user: str = "grimbots",
    query: str = "SELECT current_user",
):
    """psql from the client host over TCP, as the app connects."""
    conninfo = f"host={server} port={port} dbname=grimbots user={user} connect_timeout=5"
    env = f"PGPASSWORD={shlex.quote(password)} " if password else "PGPASSWORD= "
    return client.run(f"{env}psql -X -A -t -w {shlex.quote(conninfo)} -c {shlex.quote(query)}")


def playbook(path: Path, *args: str) -> subprocess.CompletedProcess:
    """ansible-playbook against this scenario's inventory, as Molecule runs it."""
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles")}
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(path), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    print(done.stdout[-4000:])
    return done
