"""Redis high availability, with real servers: a primary, a replica and three Sentinels
(`redis-server --sentinel`).

- With GRIMBOTS_REDIS_MIN_REPLICA_ACKS=1 the webhook answers 200 only once a replica holds
  the update (WAIT pipelined after the ingest script), and 503 (Telegram retries) when none
  acknowledged it in time, the retry of that update included.
- The webhook and the RQ workers reach Redis through Sentinel (the code path production
  uses with replicas) and follow a failover: kill -9 of the primary and a planned
  SENTINEL FAILOVER. Every update answered 200 is on the new primary afterwards and is
  processed by the workers (acknowledged vs present is counted and printed).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from grimbots.lab.audit import jobs_left
from grimbots.lab.servers import GRIMBOTS, Process, RedisServer, SentinelServer, wait_until
from grimbots.models import InboundUpdate
from grimbots.queues import TASKS, get_queue, update_job_id
from grimbots.settings import load_settings
from grimbots.web import create_wsgi_app, services_of
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import select
from support import measure, start_message
from werkzeug.test import Client

PASSWORD = "ha-test-redis-password-0123"
MASTER = "grimbots"
# Sentinel's failure detection. The old primary comes back after a failover as a replica
# of the new one, as the redis role's unit does (redis-find-primary before the start).
DOWN_AFTER_MS = 1000
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


class Cluster:
    """A primary, one replica and three Sentinels on 127.0.0.1."""

    def __init__(self, root: Path):
        def workdir(name: str) -> Path:
            path = root / name
            path.mkdir()
            return path

        # As the redis role sets it: a full sync starts at once instead of Redis' default
        # 5 s wait for more replicas (a replica rejoining after a failover needs one).
        sync_now = ("--repl-diskless-sync-delay", "0")
        self.primary = RedisServer(workdir("a"), *sync_now, password=PASSWORD)
        self.replica = RedisServer(
            workdir("b"),
            *sync_now,
            "--replicaof",
            "127.0.0.1",
            str(self.primary.port),
            password=PASSWORD,
        )
        self.nodes = {n.port: n for n in (self.primary, self.replica)}
        sentinel_dir = workdir("sentinels")
        self.sentinels = [
            SentinelServer(sentinel_dir, self.primary.port, MASTER, PASSWORD, DOWN_AFTER_MS)
            for _ in range(3)
        ]

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(
            self._sentinels_ready, timeout=30, what="Sentinels to see the replica and each other"
        )

    def _sentinels_ready(self) -> bool:
        link = self.replica.client().info("replication").get("master_link_status")
        views = [s.client().sentinel_master(MASTER) for s in self.sentinels]
        return link == "up" and all(
            v["num-slaves"] == 1 and v["num-other-sentinels"] == 2 for v in views
        )

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()

    def master_port(self) -> int:
        """The primary the Sentinels agree on (all three must say the same)."""
        answers = {s.client().sentinel_get_master_addr_by_name(MASTER) for s in self.sentinels}
        assert len(answers) == 1, f"Sentinels disagree: {answers}"
        return int(answers.pop()[1])

    def env(self, base: dict[str, str], min_acks: int) -> dict[str, str]:
        sentinels = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        env = {k: v for k, v in base.items() if k != "GRIMBOTS_REDIS_URL"}
        return env | {
            "GRIMBOTS_REDIS_SENTINELS": sentinels,
            "GRIMBOTS_REDIS_SENTINEL_MASTER": MASTER,
            "GRIMBOTS_REDIS_PASSWORD": PASSWORD,
            "GRIMBOTS_REDIS_MIN_REPLICA_ACKS": str(min_acks),
        }


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def update_id_job(bot, update_id: int) -> str:
    return update_job_id(bot.id, update_id)


def webhook_client(env: dict[str, str]) -> tuple[Client, object]:
    app = create_wsgi_app(load_settings(env))
    return Client(app), app.flask_app


def post(client: Client, bot, update_id: int) -> int:
    return client.post(
        f"/webhook/telegram/{bot.id}",
        data=orjson.dumps(start_message(update_id, 7000 + update_id % 50)),
        headers={SECRET_HEADER: bot.secret},
        content_type="application/json",
    ).status_code


# --- WAIT without Sentinel: a primary and its replica --------------------------------------


@pytest.fixture
def replicated(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    primary = RedisServer(tmp_path / "a", password=PASSWORD)
    primary.start()
    replica = RedisServer(
        tmp_path / "b", "--replicaof", "127.0.0.1", str(primary.port), password=PASSWORD
    )
    replica.start()
    wait_until(
        lambda: replica.client().info("replication")["master_link_status"] == "up",
        what="replica link up",
    )
    yield primary, replica
    replica.stop()
    primary.stop()


def primary_env(env, primary, min_acks: int) -> dict[str, str]:
    return env | {
        "GRIMBOTS_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{primary.port}/0",
        "GRIMBOTS_REDIS_MIN_REPLICA_ACKS": str(min_acks),
        "GRIMBOTS_REDIS_REPLICA_ACK_TIMEOUT_MS": "200",
    }


def test_200_means_the_replica_holds_the_update(env, bot, replicated):
    primary, replica = replicated
    client, _ = webhook_client(primary_env(env, primary, min_acks=1))
    for update_id in range(1, 21):
        assert post(client, bot, update_id) == 200
        # Read at once, without waiting: WAIT returned only after the replica had it.
        assert replica.client().exists(f"rq:job:{update_id_job(bot, update_id)}") == 1


def test_no_replica_ack_answers_503_and_so_does_the_retry(env, bot, replicated):
    primary, replica = replicated
    client, _ = webhook_client(primary_env(env, primary, min_acks=1))
    os.kill(replica.process.pid, signal.SIGSTOP)  # connected, but acknowledges nothing
    try:
        assert post(client, bot, 1) == 503  # enqueued on the primary, not replicated
        # Telegram's retry finds the dedupe key: a duplicate, but still on one server only.
        assert post(client, bot, 1) == 503
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert post(client, bot, 1) == 200  # the retry once the replica is back: now it holds it
    assert replica.client().lrange(f"rq:queue:{TASKS}", 0, -1) == [update_id_job(bot, 1).encode()]


def test_without_replica_acks_the_webhook_does_not_wait(env, bot, replicated):
    primary, replica = replicated
    client, _ = webhook_client(primary_env(env, primary, min_acks=0))
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        assert post(client, bot, 1) == 200
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)


# --- An outage longer than a retry budget ---------------------------------------------------

# Longer than the retries the workers had before they waited for Redis without end (about
# 21 s): Sentinel's re-election after a failed first one takes 2 x failover-timeout more.
OUTAGE_SECONDS = 30


@pytest.mark.timeout(120)
def test_a_worker_mid_job_waits_out_a_long_redis_outage(env, bot, services, telegram, tmp_path):
    # Every write on disk before it is acknowledged: the restarted server has all of them.
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        worker_env = env | {"GRIMBOTS_REDIS_URL": server.url}
        client, flask_app = webhook_client(worker_env)
        worker = Process([GRIMBOTS, "worker", TASKS], worker_env, tmp_path / "worker.log")
        try:
            # The first reply answers late (within the client's 2 s): its job is still running.
            telegram.faults(slow={"delay": 1.5, "count": 1})
            posted = list(range(1, 21))
            assert {post(client, bot, u) for u in posted} == {200}
            wait_until(lambda: telegram.calls("sendMessage"), what="the worker's first reply")
            server.kill()  # mid-job: its job is started, its result not yet written
            time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a condition
            server.start()

            def drained() -> bool:
                left = jobs_left(server.client(), (TASKS,))
                return set(posted) <= processed_update_ids(services, bot) and not any(left.values())

            try:
                wait_until(drained, timeout=60, what="every update processed, no job left")
            except AssertionError as timed_out:
                raise AssertionError(
                    f"{timed_out}; left: {jobs_left(server.client(), (TASKS,))}; worker alive: "
                    f"{worker.popen.poll() is None}; its output: {worker.output()[-3000:]}"
                ) from None
            assert worker.popen.poll() is None, f"the worker died: {worker.output()[-3000:]}"
            sent = [(c["params"]["chat_id"], c["params"]["text"]) for c in telegram.calls()]
            assert len(sent) == len(set(sent)), "a reply was sent twice"
        finally:
            worker.stop()
            services_of(flask_app).db.dispose()
    finally:
        server.stop()


# --- Sentinel failover under load -----------------------------------------------------------


@dataclass
class Load:
    """Posts update after update (one every `pace` s) until stopped; records each answer."""

    client: Client
    bot: object
    pace: float = 0.01
    answers: list[tuple[int, int, float]] = field(default_factory=list)  # id, status, time
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        update_id = 0
        while not self._stop.is_set():
            update_id += 1
            status = post(self.client, self.bot, update_id)
            self.answers.append((update_id, status, time.monotonic()))
            time.sleep(self.pace)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def accepted(self) -> list[int]:
        return [u for u, status, _ in self.answers if status == 200]

    def ok_after(self, moment: float) -> int:
        return sum(1 for _, status, t in self.answers if status == 200 and t > moment)

    def write_gap(self) -> float:
        """The longest time between two consecutive 200 answers (the failover's gap)."""
        times = [t for _, status, t in self.answers if status == 200]
        return max(b - a for a, b in itertools.pairwise(times))


def start_workers(env: dict[str, str], tmp_path: Path, cluster: Cluster, count: int):
    workers = [
        Process([GRIMBOTS, "worker", TASKS], env, tmp_path / f"worker-{i}.log")
        for i in range(count)
    ]
    master = cluster.nodes[cluster.master_port()].client()
    wait_until(
        lambda: len(master.smembers(f"rq:workers:{TASKS}")) >= count,
        timeout=30,
        what="workers registered through Sentinel",
    )
    return workers


def processed_update_ids(services, bot) -> set[int]:
    with services.db.session() as session:
        rows = session.scalars(
            select(InboundUpdate.update_id).where(InboundUpdate.bot_id == bot.id)
        )
        return set(rows)


def run_failover(cluster, env, bot, services, tmp_path, trigger, name: str) -> None:
    """Load through Sentinel with replica acks on, fail over with `trigger`, then count."""
    ha_env = cluster.env(env, min_acks=1)
    client, flask_app = webhook_client(ha_env)
    workers = start_workers(ha_env, tmp_path, cluster, count=2)
    try:
        load = Load(client, bot)
        load.start()
        try:
            wait_until(lambda: load.ok_after(0) >= 30, timeout=20, what="load before it")
            old_port = cluster.master_port()
            started = time.monotonic()
            trigger(cluster)
            wait_until(lambda: cluster.master_port() != old_port, timeout=30, what="promotion")
            promoted = time.monotonic() - started
            wait_until(lambda: load.ok_after(started) >= 30, timeout=60, what="200s after it")
        finally:
            load.stop()
        new_master = cluster.nodes[cluster.master_port()].client()
        accepted = load.accepted()
        present = [u for u in accepted if new_master.exists(f"rq:job:{update_id_job(bot, u)}")]
        measure(f"{name}_promoted_s", round(promoted, 2))
        measure(f"{name}_webhook_write_gap_s", round(load.write_gap(), 2))
        measure(f"{name}_acknowledged", len(accepted))
        measure(f"{name}_present_after", len(present))
        measure(f"{name}_answered_503", sum(1 for _, s, _ in load.answers if s == 503))
        assert len(present) == len(accepted), (
            f"{len(accepted) - len(present)} acknowledged updates lost: "
            f"{sorted(set(accepted) - set(present))[:20]}"
        )
        # The workers followed the failover: every acknowledged update gets processed, and
        # no worker died on the way.
        try:
            wait_until(
                lambda: set(accepted) <= processed_update_ids(services, bot),
                timeout=90,
                what="the workers to process every acknowledged update",
            )
        except AssertionError as timed_out:
            missing = sorted(set(accepted) - processed_update_ids(services, bot))
            raise AssertionError(
                f"{timed_out}: {len(missing)} not processed; where they are: "
                f"{whereabouts(new_master, [update_id_job(bot, u) for u in missing[:20]])}; "
                f"workers alive: {[w.popen.poll() is None for w in workers]}; "
                f"last worker output: {[w.output()[-2000:] for w in workers]}"
            ) from None
        for worker in workers:
            assert worker.popen.poll() is None, f"a worker died: {worker.output()[-3000:]}"
    finally:
        for worker in workers:
            worker.stop()
        services_of(flask_app).db.dispose()


def whereabouts(connection, job_ids: list[str]) -> dict[str, str]:
    """Each job's status and the lists and registries of the tasks queue that hold it."""
    queue = get_queue(TASKS, connection)
    places = {
        "queued": queue.get_job_ids(),
        "dequeued": queue.intermediate_queue.get_job_ids(),
        "started": StartedJobRegistry(queue=queue).get_job_ids(),
        "failed": FailedJobRegistry(queue=queue).get_job_ids(),
        "scheduled": ScheduledJobRegistry(queue=queue).get_job_ids(),
    }
    return {
        job_id: f"{connection.hget(f'rq:job:{job_id}', 'status')!r} in "
        f"{[name for name, ids in places.items() if job_id in ids]}"
        for job_id in job_ids
    }


def kill_primary(cluster: Cluster) -> None:
    old = cluster.nodes[cluster.master_port()]
    old.kill()
    # Back once Sentinel has promoted the replica, as a replica of the new primary (what
    # the role's unit does after its RestartSec).
    wait_until(lambda: cluster.master_port() != old.port, timeout=30, what="promotion")
    old.extra_args = [*old.extra_args, "--replicaof", "127.0.0.1", str(cluster.master_port())]
    old.start()


def planned_failover(cluster: Cluster) -> None:
    assert cluster.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", MASTER)


def test_kill_9_of_the_primary_loses_no_acknowledged_update(cluster, env, bot, services, tmp_path):
    run_failover(cluster, env, bot, services, tmp_path, kill_primary, "kill9")


def test_planned_failover_loses_no_acknowledged_update(cluster, env, bot, services, tmp_path):
    run_failover(cluster, env, bot, services, tmp_path, planned_failover, "planned")
