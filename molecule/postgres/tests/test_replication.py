"""The replica: a hot standby streaming from the primary through its replication slot."""

import uuid

import pytest
from infra import wait_until
from pg import hosts, sql, value


@pytest.fixture(scope="module")
def h():
    return hosts()


def test_replica_is_a_hot_standby(h):
    assert value(h["replica"], "SELECT pg_is_in_recovery()") == "t"
    assert value(h["replica"], "SELECT status FROM pg_stat_wal_receiver") == "streaming"


def test_primary_streams_to_the_replica_through_its_slot(h):
    slot = h["names"]["replica"].lower().replace("-", "_")
    assert (
        value(
            h["primary"],
            f"SELECT state FROM pg_stat_replication WHERE application_name = '{slot}'",
        )
        == "streaming"
    )
    assert (
        value(
            h["primary"],
            f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'",
        )
        == "t"
    )


def test_a_write_on_the_primary_reaches_the_replica(h):
    marker = uuid.uuid4().hex
    out = sql(
        h["primary"],
        "CREATE TABLE IF NOT EXISTS replication_check (marker text PRIMARY KEY);"
        f" INSERT INTO replication_check VALUES ('{marker}')",
        db="postgres",
    )
    assert out.rc == 0, out.stderr
    wait_until(
        lambda: (
            value(
                h["replica"],
                f"SELECT count(*) FROM replication_check WHERE marker = '{marker}'",
                db="postgres",
            )
            == "1"
        ),
        timeout=30,
        what="the row on the replica",
    )


def test_the_replica_refuses_writes(h):
    out = sql(h["replica"], "CREATE TABLE nope (id int)", db="postgres")
    assert out.rc != 0 and "read-only transaction" in out.stderr
