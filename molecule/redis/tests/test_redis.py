"""The redis role: a durable, non-evicting Redis that the app network can reach (the
first server: the initial primary; test_sentinel.py covers the replica and Sentinel)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from infra import host_in

APP_PASSWORD = "molecule-app-password"
ADMIN = "--user admin --pass molecule-admin-password --no-auth-warning"


@pytest.fixture(scope="module")
def server():
    return host_in("redis")


@pytest.fixture(scope="module")
def client():
    return host_in("client")


def cli(host, args, target="127.0.0.1"):
    return host.run(f"redis-cli -h {target} -p 6379 {args}")


def config_get(server, key):
    out = cli(server, f"{ADMIN} CONFIG GET {key}")
    assert out.rc == 0, out.stderr
    return out.stdout.split()[1]


def test_unit_is_enabled_and_active(server):
    service = server.service("redis-server")
    assert service.is_enabled
    assert service.is_running


def test_listens_on_loopback_and_private_address_only(server):
    private = server.interface("eth0").addresses[0]
    listening = {
        line.split()[3].rsplit(":", 1)[0]
        for line in server.run("ss -Htln 'sport = :6379'").stdout.splitlines()
    }
    assert listening == {"127.0.0.1", private}


def test_client_host_reaches_server_by_name(server, client):
    name = server.backend.name
    out = cli(client, f"--pass {APP_PASSWORD} --no-auth-warning PING", target=name)
    assert out.stdout.strip() == "PONG", out.stderr


def test_password_is_required(server, client):
    out = cli(client, "PING", target=server.backend.name)
    assert "NOAUTH" in out.stdout + out.stderr


def test_app_user_cannot_flush_or_reconfigure(server):
    for command in ("FLUSHALL", "CONFIG GET maxclients", "SHUTDOWN"):
        out = cli(server, f"--pass {APP_PASSWORD} --no-auth-warning {command}")
        assert "NOPERM" in out.stdout + out.stderr, command


def test_queue_settings(server):
    assert config_get(server, "maxmemory-policy") == "noeviction"
    assert config_get(server, "appendonly") == "yes"
    assert config_get(server, "appendfsync") == "everysec"


def test_variable_change_reaches_running_server(server):
    # prepare.yml ran the role with defaults (10000, 0); converge changed both.
    assert config_get(server, "maxclients") == "4321"
    assert config_get(server, "maxmemory") == str(64 * 1024 * 1024)


def test_config_file_is_not_world_readable(server):
    config = server.file("/etc/redis/redis.conf")
    assert config.mode == 0o640
    assert APP_PASSWORD not in config.content_string
