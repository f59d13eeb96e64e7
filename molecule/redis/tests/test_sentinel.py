"""Replication and Sentinel: the second server replicates the first, three Sentinels agree
on the primary, a failover (kill -9, then a planned SENTINEL FAILOVER) brings writes back
quickly, and re-running the playbook afterwards changes nothing and keeps the topology.

A writer on the controller goes through Sentinel like the app does: SADD of a new member
every 20 ms, then WAIT 1 (the app's GRIMBOTS_REDIS_MIN_REPLICA_ACKS=1). A write is
"accepted" when SADD answered, "acknowledged" when a replica confirmed it too; every
acknowledged member must be on the new primary. Figures print as MEASURE lines.
"""

import itertools
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from infra import container, inventory_groups, measure, private_address, rerun_playbook, wait_until

SCENARIO = Path(__file__).resolve().parents[1]
APP_PASSWORD = "molecule-app-password"
ADMIN = "--user admin --pass molecule-admin-password --no-auth-warning"
MASTER = "grimbots"
DOWN_AFTER_S = 3.0  # converge.yml's redis_sentinel_down_after_ms
WRITES_BACK_WITHIN = DOWN_AFTER_S + 2.0


def address(name) -> str:
    return private_address(container(name))


@pytest.fixture(scope="module")
def servers() -> dict[str, str]:
    """Container name -> address."""
    return {name: address(name) for name in inventory_groups()["redis"]}


@pytest.fixture(scope="module")
def sentinels() -> list[str]:
    return [address(name) for name in inventory_groups()["sentinel"]]


def cli(name, args, port=6379):
    return container(name).check_output(f"redis-cli -h 127.0.0.1 -p {port} {args}")


def replication(name) -> dict[str, str]:
    out = cli(name, f"{ADMIN} INFO replication")
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def primary_per_sentinel(sentinels) -> set[str]:
    answers = set()
    for ip in sentinels:
        client = redis.Redis(host=ip, port=26379, socket_timeout=2, decode_responses=True)
        answers.add(tuple(client.sentinel_get_master_addr_by_name(MASTER) or ()))
    return answers


def current_primary(sentinels) -> str | None:
    """The primary's address once every Sentinel gives the same one (None meanwhile)."""
    answers = primary_per_sentinel(sentinels)
    return next(iter(answers))[0] if len(answers) == 1 else None


def name_of(servers, ip) -> str:
    return next(name for name, address in servers.items() if address == ip)


def primary_and_replica(servers, sentinels) -> tuple[str, str]:
    """The container names of the primary the Sentinels agree on and of its replica, in
    sync: each test starts from what the one before it left (a failover swaps them)."""
    wait_until(lambda: current_primary(sentinels), 30, "the Sentinels to agree on a primary")
    primary = name_of(servers, current_primary(sentinels))
    (replica,) = set(servers) - {primary}
    wait_until(lambda: replication(replica).get("master_link_status") == "up", 60, "the replica")
    return primary, replica


class Writer:
    """SADD + WAIT 1 through Sentinel, one member every 20 ms, until stopped."""

    def __init__(self, sentinels):
        sentinel = Sentinel([(ip, 26379) for ip in sentinels], socket_timeout=0.5)
        self.client = sentinel.master_for(
            MASTER,
            password=APP_PASSWORD,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            decode_responses=True,
        )
        self.accepted: list[tuple[int, float]] = []
        self.acknowledged: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        wait_until(lambda: len(self.acknowledged) >= 20, 20, "writes before the failover")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        for member in itertools.count():
            if self._stop.is_set():
                return
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.sadd("molecule:writes", member)
                pipe.execute_command("WAIT", 1, 200)
                _, replicas = pipe.execute()
                self.accepted.append((member, time.monotonic()))
                if replicas >= 1:
                    self.acknowledged.append((member, time.monotonic()))
            except redis.RedisError:
                pass
            time.sleep(0.02)

    @staticmethod
    def gap(writes, since: float) -> float:
        times = [since] + [t for _, t in writes if t > since]
        return max(b - a for a, b in itertools.pairwise(times))

    def count_after(self, writes, since: float) -> int:
        return sum(1 for _, t in writes if t > since)


def lost_writes(writer, primary_name) -> tuple[set[int], set[int]]:
    """(acknowledged, accepted) members that the primary does not hold."""
    out = container(primary_name).check_output(
        f"redis-cli -h 127.0.0.1 --pass {APP_PASSWORD} --no-auth-warning SMEMBERS molecule:writes"
    )
    members = {int(member) for member in out.split()}
    acknowledged = {m for m, _ in writer.acknowledged}
    accepted = {m for m, _ in writer.accepted}
    return acknowledged - members, accepted - members


def test_the_replica_follows_the_primary(servers, sentinels):
    primary, replica = primary_and_replica(servers, sentinels)
    info = replication(replica)
    assert info["role"] == "slave"
    assert (info["master_host"], info["master_link_status"]) == (servers[primary], "up")
    assert replication(primary)["connected_slaves"] == "1"


def test_sentinels_agree_and_see_each_other(servers, sentinels):
    primary, _ = primary_and_replica(servers, sentinels)
    assert primary_per_sentinel(sentinels) == {(servers[primary], 6379)}
    for name in inventory_groups()["sentinel"]:
        lines = cli(name, f"SENTINEL MASTER {MASTER}", port=26379).splitlines()
        view = dict(zip(lines[0::2], lines[1::2], strict=True))
        assert (view["num-slaves"], view["num-other-sentinels"], view["quorum"]) == ("1", "2", "2")
        # converge.yml changed it from the default 5000: SENTINEL SET reached every monitor.
        assert view["down-after-milliseconds"] == "3000"


def test_redis_cannot_rewrite_the_file_the_role_owns(servers, sentinels):
    first, _ = primary_and_replica(servers, sentinels)
    before = container(first).file("/etc/redis/redis.conf").sha256sum
    out = container(first).run(f"redis-cli -h 127.0.0.1 {ADMIN} CONFIG REWRITE")
    assert "Read-only file system" in out.stdout + out.stderr
    assert container(first).file("/etc/redis/redis.conf").sha256sum == before


def test_kill_9_of_the_primary(servers, sentinels):
    first, second = primary_and_replica(servers, sentinels)
    with Writer(sentinels) as writer:
        killed = time.monotonic()
        container(first).check_output("systemctl kill --signal=SIGKILL redis-server")
        wait_until(lambda: current_primary(sentinels) == servers[second], 30, "promotion")
        promoted = time.monotonic() - killed
        wait_until(lambda: writer.count_after(writer.accepted, killed) >= 20, 20, "writes back")
        # The killed server comes back after RestartSec, as a replica of the new primary
        # (redis-find-primary before the start), and then acknowledgements resume.
        wait_until(lambda: writer.count_after(writer.acknowledged, killed) >= 20, 60, "acks back")
    writes_back = writer.gap(writer.accepted, killed)
    measure("kill9_promoted_s", round(promoted, 2))
    measure("kill9_writes_back_s", round(writes_back, 2))
    measure("kill9_acknowledged_writes_back_s", round(writer.gap(writer.acknowledged, killed), 2))
    info = replication(first)
    assert (info["role"], info["master_host"]) == ("slave", servers[second])
    lost_acked, lost_accepted = lost_writes(writer, second)
    measure("kill9_accepted_not_acknowledged_lost", len(lost_accepted))
    assert not lost_acked, f"acknowledged writes lost: {sorted(lost_acked)[:20]}"
    assert writes_back < WRITES_BACK_WITHIN


def test_a_rerun_changes_nothing_and_keeps_the_primary_sentinel_chose(servers, sentinels):
    """After a failover (whichever test made one) the role must not reset the state
    Sentinel wrote into its own config (DavidWittman/ansible-redis#22)."""
    if current_primary(sentinels) == address(inventory_groups()["redis"][0]):
        cli(inventory_groups()["sentinel"][0], f"SENTINEL FAILOVER {MASTER}", port=26379)
    primary, replica = primary_and_replica(servers, sentinels)
    assert primary != inventory_groups()["redis"][0], "no failover to keep"
    recap = rerun_playbook(SCENARIO / "converge.yml")
    assert {name: counts["changed"] for name, counts in recap.items()} == dict.fromkeys(recap, 0)
    assert current_primary(sentinels) == servers[primary]
    assert replication(replica)["master_host"] == servers[primary]


def test_planned_failover(servers, sentinels):
    second, first = primary_and_replica(servers, sentinels)  # first: the one to promote
    with Writer(sentinels) as writer:
        started = time.monotonic()
        cli(inventory_groups()["sentinel"][0], f"SENTINEL FAILOVER {MASTER}", port=26379)
        wait_until(lambda: current_primary(sentinels) == servers[first], 30, "promotion")
        promoted = time.monotonic() - started
        # Sentinel turns the old primary into a replica about 10 s later: until then it
        # takes writes no replica will ever have (WAIT answers 0 there).
        wait_until(lambda: replication(second).get("master_link_status") == "up", 60, "old primary")
        wait_until(lambda: writer.count_after(writer.acknowledged, started) >= 20, 30, "acks")
    acknowledged_back = writer.gap(writer.acknowledged, started)
    measure("planned_promoted_s", round(promoted, 2))
    measure("planned_writes_back_s", round(writer.gap(writer.accepted, started), 2))
    measure("planned_acknowledged_writes_back_s", round(acknowledged_back, 2))
    lost_acked, lost_accepted = lost_writes(writer, first)
    # What WAIT protects against: writes the old primary took after the promotion.
    measure("planned_accepted_not_acknowledged_lost", len(lost_accepted))
    assert not lost_acked, f"acknowledged writes lost: {sorted(lost_acked)[:20]}"
    assert writer.gap(writer.accepted, started) < WRITES_BACK_WITHIN
