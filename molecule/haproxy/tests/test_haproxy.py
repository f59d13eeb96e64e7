"""The haproxy role: requests spread over the app hosts, a stopped one is out of rotation
in seconds with no failed request (retries), drain and ready through the runtime API (the
tasks deploy.yml uses), hitless reloads, limits, mutual TLS on the PIX webhook, and a
broken configuration refused before it reaches the service.

Requests come from the controller to the load balancer's address on the scenario's
network; the app hosts run a stand-in (files/backend.py) that answers with its host name
and the headers it got. Figures print as MEASURE lines.
"""

import hashlib
import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from infra import (
    container,
    host_in,
    inventory_groups,
    measure,
    play_recap,
    private_address,
    rerun_playbook,
    run_playbook,
    wait_until,
)

SCENARIO = Path(__file__).resolve().parents[1]
PKI = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "pki"
SOCKET = "/run/haproxy/admin.sock"
OUT_OF_ROTATION_LIMIT = 5.0


@pytest.fixture(scope="module")
def lb():
    return host_in("lb")


@pytest.fixture(scope="module")
def apps() -> list[str]:
    return inventory_groups()["app"]


@pytest.fixture(scope="module")
def address(lb) -> str:
    return private_address(lb)


@pytest.fixture(scope="module")
def front(address) -> str:
    return f"http://{address}"


def runtime_api(lb, command: str) -> str:
    return lb.check_output(f"echo '{command}' | socat stdio UNIX-CONNECT:{SOCKET}")


def server_status(lb, server: str, backend: str = "webhooks") -> str:
    for line in runtime_api(lb, "show stat").splitlines():
        fields = line.split(",")
        if fields[:2] == [backend, server]:
            return fields[17]  # the "status" column
    return "ABSENT"


def served_by(front, path="/webhook/telegram/1", count=20) -> Counter:
    with httpx.Client(timeout=5) as client:
        return Counter(
            client.post(front + path, content=b"{}").json()["host"] for _ in range(count)
        )


class Load:
    """Webhook POSTs from a few threads with keep-alive clients, until stopped.

    When a server dies with idle connections HAProxy reuses, HAProxy closes the client's
    keep-alive connection without an answer, on purpose: that request reached no server,
    and the closed connection tells the client it may send it again (haproxy/haproxy#3414).
    Telegram re-sends whatever it got no answer for; so does this client, once, on a new
    connection, and counts it (resent). Any other error, or a second one, is a failure."""

    def __init__(self, front, threads=4, pause=0.01):
        self.url = front + "/webhook/telegram/1"
        self.pause = pause
        # time, status (0: no answer), host (for no answer: the client's exception)
        self.answers: list[tuple[float, int, str]] = []
        self.resent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        # Above HAProxy's worst case for a webhook (retries x its 5 s server timeout): a
        # slow answer is still an answer; only a refused or dropped request fails.
        client = httpx.Client(timeout=30)
        while not self._stop.is_set():
            try:
                try:
                    response = client.post(self.url, content=b'{"update_id": 1}')
                except httpx.RemoteProtocolError:
                    self.resent += 1
                    client.close()
                    client = httpx.Client(timeout=30)
                    response = client.post(self.url, content=b'{"update_id": 1}')
                host = response.json().get("host", "") if response.status_code == 200 else ""
                self.answers.append((time.monotonic(), response.status_code, host))
            except httpx.HTTPError as error:
                self.answers.append((time.monotonic(), 0, f"{type(error).__name__}: {error}"))
            time.sleep(self.pause)
        client.close()

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        wait_until(lambda: len(self.answers) >= 20, 20, "load to start")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def wait_for_more(self, count: int, what: str) -> None:
        target = len(self.answers) + count
        wait_until(lambda: len(self.answers) >= target, 20, what)

    def failed(self) -> int:
        return sum(1 for _, status, _ in self.answers if status != 200)

    def failures(self) -> list[tuple[int, str]]:
        return [(status, host) for _, status, host in self.answers if status != 200]

    def hosts_after(self, moment) -> Counter:
        return Counter(host for t, status, host in self.answers if t > moment and status == 200)


def test_haproxy_runs_master_worker_with_a_valid_config(lb):
    assert lb.service("haproxy").is_running
    assert lb.service("haproxy").is_enabled
    assert lb.run("haproxy -c -f /etc/haproxy/haproxy.cfg").rc == 0
    processes = lb.check_output("pgrep -c -x haproxy")
    assert int(processes) >= 2, "master-worker: a master and at least one worker"
    assert "Name: HAProxy" in runtime_api(lb, "show info")


def test_requests_are_spread_over_both_app_hosts(lb, apps, front):
    # prepare.yml started with the first app host only; converge added the second from the
    # inventory's app group, and it takes traffic once its health check passes.
    wait_until(lambda: server_status(lb, apps[1]) == "UP", 20, "the added host to be UP")
    hosts = served_by(front, count=40)
    print(f"\nserved by: {dict(hosts)}")
    assert set(hosts) == set(apps)
    assert min(hosts.values()) >= 15  # round robin


def test_only_haproxy_sets_the_client_certificate_headers(front):
    forged = {"X-Client-Verify": "0", "X-Client-Cert-Subject": "CN=webhook.psp.molecule"}
    got = httpx.post(front + "/webhook/telegram/1", content=b"{}", headers=forged).json()
    assert "x-client-verify" not in got["headers"]
    assert "x-client-cert-subject" not in got["headers"]
    assert got["headers"].get("x-forwarded-proto") == "http"


def test_a_body_over_the_limit_is_refused(front):
    too_big = httpx.post(front + "/webhook/telegram/1", content=b"x" * (1024 * 1024 + 1))
    assert too_big.status_code == 413
    assert httpx.post(front + "/webhook/telegram/1", content=b"x" * 1000).status_code == 200


def test_operator_paths_are_rate_limited_per_source(front):
    with httpx.Client(timeout=5) as client:
        admin = Counter(client.get(front + "/admin/bots").status_code for _ in range(40))
        webhook = Counter(client.post(front + "/webhook/telegram/1").status_code for _ in range(40))
    print(f"\n/admin: {dict(admin)}, /webhook: {dict(webhook)}")
    assert admin[429] > 0 and admin[200] <= 21  # molecule.yml: 20 per 10 s
    assert webhook == {200: 40}


def test_stats_page_and_prometheus_endpoint(address, apps):
    metrics = httpx.get(f"http://{address}:8404/metrics").text
    for app in apps:
        assert f'haproxy_server_status{{proxy="webhooks",server="{app}",state="UP"}} 1' in metrics
    assert httpx.get(f"http://{address}:8404/stats").status_code == 200


def test_the_pix_webhook_needs_the_psps_client_certificate(address):
    url = f"https://{address}/webhook/pix/apipix"
    psp = (str(PKI / "client.pem"), str(PKI / "client.key"))
    stranger = (str(PKI / "stranger.pem"), str(PKI / "stranger.key"))
    with httpx.Client(verify=False, cert=psp) as client:
        got = client.post(url, content=b"{}").json()["headers"]
    assert got["x-client-verify"] == "0"
    assert got["x-client-cert-subject"] == "CN=webhook.psp.molecule,O=Molecule PSP"
    assert got["x-forwarded-proto"] == "https"
    with httpx.Client(verify=False, cert=stranger) as client:
        assert client.post(url, content=b"{}").status_code == 403  # signed, wrong subject
    with httpx.Client(verify=False) as client:
        assert client.post(url, content=b"{}").status_code == 403  # no certificate
        # Telegram presents none, and needs none.
        assert client.post(f"https://{address}/webhook/telegram/1").status_code == 200
    assert httpx.post(f"http://{address}/webhook/pix/apipix").status_code == 403  # plain


def test_a_stopped_app_host_is_out_of_rotation_quickly_and_no_request_fails(lb, apps, front):
    stopped = apps[0]
    try:
        with Load(front) as load:
            started = time.monotonic()
            container(stopped).check_output("systemctl stop molecule-backend")
            wait_until(lambda: server_status(lb, stopped).startswith("DOWN"), 15, "DOWN")
            out_of_rotation = time.monotonic() - started
            load.wait_for_more(50, "requests to the other host alone")
    finally:
        # Back in rotation whatever happened: the next tests need both hosts.
        container(stopped).check_output("systemctl start molecule-backend")
        wait_until(lambda: server_status(lb, stopped) == "UP", 20, "the host back UP")
    measure("out_of_rotation_s", round(out_of_rotation, 2))
    measure("requests_during_the_stop", len(load.answers))
    measure("failed_requests", load.failed())
    measure("resent_after_a_closed_keep_alive_connection", load.resent)
    assert load.failed() == 0, load.failures()[:5]
    assert out_of_rotation < OUT_OF_ROTATION_LIMIT


def slow_requests(front, count, seconds):
    """`count` concurrent requests that take `seconds` on the server: the pool and futures
    of (host, status, time it ended)."""

    def one(_):
        response = httpx.get(f"{front}/slow?seconds={seconds}", timeout=seconds + 20)
        return response.json()["host"], response.status_code, time.monotonic()

    pool = ThreadPoolExecutor(count)
    return pool, [pool.submit(one, i) for i in range(count)]


def test_drain_waits_for_requests_in_flight_then_ready_brings_the_host_back(lb, apps, front):
    drained = apps[0]
    pool, slow = slow_requests(front, 4, 8)  # round robin: two of them on each host
    wait_until(lambda: busy(lb, drained), 10, "slow requests in flight")
    started = time.monotonic()
    run = run_playbook(SCENARIO / "drain.yml", "-e", f"server={drained}")
    drain_took = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-3000:]
    finished = [future.result() for future in slow]
    pool.shutdown()
    assert server_status(lb, drained) in ("DRAIN", "DOWN")  # admin state DRAIN
    assert all(status == 200 for _, status, _ in finished)
    on_drained = [end for host, _, end in finished if host == drained]
    assert on_drained and max(on_drained) <= started + drain_took  # it waited for them
    measure("drain_waited_s", round(drain_took, 2))
    assert set(served_by(front)) == {apps[1]}  # new requests avoid the drained host
    rerun_playbook(SCENARIO / "ready.yml", "-e", f"server={drained}")
    assert server_status(lb, drained) == "UP"
    assert set(served_by(front)) == set(apps)


def busy(lb, server) -> bool:
    for line in runtime_api(lb, "show stat").splitlines():
        fields = line.split(",")
        if fields[1:2] == [server] and fields[4].isdigit() and int(fields[4]) > 0:  # scur
            return True
    return False


def reload(lb) -> None:
    """systemctl reload, then wait for the new worker (the newest haproxy process)."""
    before = lb.check_output("pgrep -x -n haproxy")
    lb.check_output("systemctl reload haproxy")
    wait_until(lambda: lb.check_output("pgrep -x -n haproxy") != before, 10, "a new worker")


def test_reload_is_hitless_and_keeps_a_drained_host_drained(lb, apps, front):
    with Load(front) as load:
        for _ in range(3):
            reload(lb)
            load.wait_for_more(20, "requests to the new worker")
    measure("requests_during_3_reloads", len(load.answers))
    measure("failed_during_reloads", load.failed())
    measure("resent_during_reloads", load.resent)
    assert load.failed() == 0, load.failures()[:5]
    runtime_api(lb, f"set server webhooks/{apps[0]} state drain")
    reload(lb)  # the new worker loads the state the reload saved (server-state-file)
    assert server_status(lb, apps[0]) == "DRAIN"
    runtime_api(lb, f"set server webhooks/{apps[0]} state ready")
    assert server_status(lb, apps[0]) == "UP"


def test_a_broken_config_is_refused_and_the_running_one_kept(lb, front):
    before = hashlib.sha256(lb.file("/etc/haproxy/haproxy.cfg").content).hexdigest()
    run = run_playbook(SCENARIO / "converge.yml", "-e", "haproxy_timeout_connect=soon")
    assert run.returncode != 0
    assert "failed to validate" in run.stdout or "haproxy -c" in run.stdout, run.stdout[-2000:]
    assert play_recap(run.stdout)
    after = hashlib.sha256(lb.file("/etc/haproxy/haproxy.cfg").content).hexdigest()
    assert after == before
    assert lb.service("haproxy").is_running
    assert httpx.post(front + "/webhook/telegram/1").status_code == 200


def test_removing_a_host_drains_it_before_the_reload(lb, apps, front):
    kept, removed = apps
    only_first = json.dumps(
        {"haproxy_backend_servers": [{"name": kept, "address": kept, "port": 8000}]}
    )
    pool, slow = slow_requests(front, 4, 6)
    wait_until(lambda: busy(lb, removed), 10, "slow requests in flight on the host")
    try:
        run = run_playbook(SCENARIO / "converge.yml", "-e", only_first)
        assert run.returncode == 0, run.stdout[-3000:]
        finished = [future.result() for future in slow]
        pool.shutdown()
        assert all(status == 200 for _, status, _ in finished), finished
        assert server_status(lb, removed) == "ABSENT"
        assert set(served_by(front)) == {kept}
    finally:
        # Back in the inventory, for the tests after this one.
        back = run_playbook(SCENARIO / "converge.yml")
    assert back.returncode == 0, back.stdout[-3000:]
    wait_until(lambda: server_status(lb, removed) == "UP", 30, f"{removed} UP again")
