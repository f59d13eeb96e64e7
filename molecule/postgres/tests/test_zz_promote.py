"""Promotion, last (it changes the topology): playbooks/pg-promote.yml fences the primary,
promotes the replica and makes it a primary with its own backups."""

import json

import pytest
from pg import ROOT, app_login, hosts, playbook, sql, value


@pytest.fixture(scope="module")
def h():
    return hosts()


def test_pg_promote_makes_the_replica_the_primary(h):
    assert value(h["replica"], "SELECT pg_is_in_recovery()") == "t"
    done = playbook(
        ROOT / "playbooks" / "pg-promote.yml", "-e", f"pg_promote_host={h['names']['replica']}"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]

    replica = h["replica"]
    assert value(replica, "SELECT pg_is_in_recovery()") == "f"
    out = sql(replica, "CREATE TABLE promoted (id int); INSERT INTO promoted VALUES (1)")
    assert out.rc == 0, out.stderr
    # The data written on the old primary is there, and the app host gets in.
    assert value(replica, "SELECT count(*) > 5000 FROM drill_rows") == "t"
    assert app_login(h["client"], h["names"]["replica"]).rc == 0

    # The old primary is fenced: stopped, and not started again at boot.
    old = h["primary"].service("postgresql@15-main")
    assert not old.is_running and not old.is_enabled

    # The new primary archives into its own repository and has a first full backup.
    info = json.loads(
        replica.run("runuser -u postgres -- pgbackrest --stanza=grimbots --output=json info").stdout
    )[0]
    assert info["status"]["code"] == 0, info["status"]
    assert any(b["type"] == "full" for b in info["backup"])
    assert replica.service("pgbackrest-backup-full.timer").is_enabled
