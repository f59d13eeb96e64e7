"""The monitoring role: exporters, Prometheus, unit-tested rules, Alertmanager to Telegram.

Behaviour, not files: every target is scraped and up, the rules' unit tests pass (and fail
on a broken rule), the Watchdog reaches its heartbeat chat, and the alert path is proven
end to end: a queue's workers stopped -> NoWorkersForQueue -> Alertmanager -> a message
at the Telegram stand-in, then resolved once they are back; an exporter stopped ->
InstanceDown, which silences that host's other alerts. Timings print as MEASURE lines.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from infra import host_in, inventory_groups, measure, private_address, wait_until

SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]
OPERATORS_CHAT = -1000000000099
WATCHDOG_CHAT = -1000000000100
RULES = "/etc/prometheus/rules/grimbots.rules.yml"
RULES_TESTS = "/etc/prometheus/rules/tests/grimbots.test.yml"
CHECK_RULES = "/usr/local/sbin/monitoring-check-rules"
# Scrape and evaluation every 4 s, NoWorkersForQueue `for: 0s`, group_wait 1 s.
DELIVERY_LIMIT = 30.0


@pytest.fixture(scope="module")
def prom():
    return host_in("monitoring")


@pytest.fixture(scope="module")
def app():
    return host_in("app")


@pytest.fixture(scope="module")
def redis():
    return host_in("redis")


def get_json(host, url):
    out = host.run(shlex.join(["curl", "-sS", "-m", "5", url]))
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def prometheus(prom):
    return f"http://{private_address(prom)}:9090"


@pytest.fixture(scope="module")
def alertmanager(prom):
    return f"http://{private_address(prom)}:9093"


@pytest.fixture(scope="module")
def sandbox(app):
    return f"http://{private_address(app)}:8081"


def messages(app, sandbox, chat_id, since=0.0):
    calls = get_json(app, f"{sandbox}/_sandbox/calls?method=sendMessage&chat_id={chat_id}")
    return [c for c in calls["calls"] if c["time"] >= since and c["status"] == 200]


def active_targets(prom, prometheus):
    return get_json(prom, f"{prometheus}/api/v1/targets?state=active")["data"]["activeTargets"]


def firing(prom, prometheus, alertname):
    alerts = get_json(prom, f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def alert_path(prom, prometheus, alertmanager) -> str:
    """What each hop of the alert path holds now: for a failed wait's message."""
    query = "grimbots_queue_workers"
    samples = get_json(prom, f"{prometheus}/api/v1/query?query={query}")["data"]["result"]
    targets = [
        (t["scrapeUrl"], t["health"], t["lastError"], t["lastScrapeDuration"])
        for t in active_targets(prom, prometheus)
        if t["labels"]["job"] == "grimbots"
    ]
    alerts = get_json(prom, f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    notified = get_json(prom, f"{alertmanager}/api/v2/alerts")
    return (
        f"grimbots targets: {targets}\n{query}: "
        f"{[(r['metric'].get('queue'), r['value'][1]) for r in samples]}\n"
        f"Prometheus alerts: {[(a['labels']['alertname'], a['state']) for a in alerts]}\n"
        f"Alertmanager: {[(a['labels']['alertname'], a['status']['state']) for a in notified]}"
    )


def wait_for_alert(condition, what, prom, prometheus, alertmanager):
    try:
        return wait_until(condition, DELIVERY_LIMIT, what, 0.5)
    except pytest.fail.Exception as timed_out:
        pytest.fail(f"{timed_out}\n{alert_path(prom, prometheus, alertmanager)}")


def test_exporters_listen_on_the_private_address_only(app, redis, prom):
    for host, ports in ((app, [9100]), (redis, [9100, 9121]), (prom, [9100, 9090, 9093])):
        ip = private_address(host)
        for port in ports:
            assert host.socket(f"tcp://{ip}:{port}").is_listening, (ip, port)
            assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening, port
    metrics = redis.check_output(f"curl -sS -m 5 http://{private_address(redis)}:9121/metrics")
    assert "\nredis_up 1" in metrics


def test_every_inventory_target_is_scraped_and_up(prom, prometheus):
    groups = inventory_groups()
    expected = {("node", host) for host in groups["all"]}
    expected |= {("grimbots", host) for host in groups["app"]}
    expected |= {("redis", host) for host in groups["redis"]}
    expected |= {("sentinel", host) for host in groups["sentinel"]}
    for job in ("prometheus", "alertmanager"):
        expected |= {(job, host) for host in groups["monitoring"]}

    def all_up():
        targets = active_targets(prom, prometheus)
        seen = {(t["labels"]["job"], t["labels"]["host"]) for t in targets}
        down = [t["scrapeUrl"] for t in targets if t["health"] != "up"]
        return seen == expected and not down

    wait_until(all_up, 60, "every inventory target scraped and up", 1)


def test_rules_unit_tests_pass_and_cover_every_alert(prom):
    out = prom.run(f"{CHECK_RULES} {RULES}")
    assert out.rc == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    rules = yaml.safe_load(prom.file(RULES).content_string)
    tests = yaml.safe_load(prom.file(RULES_TESTS).content_string)
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts - fires == set(), "alerts without a firing test"
    # The Watchdog is the one alert that must never be quiet.
    assert alerts - quiet == {"Watchdog"}, "alerts without a not-firing test"
    print(f"\n{len(alerts)} alerts, {len(cases)} unit test cases")


def test_a_broken_rule_fails_its_unit_tests(prom):
    broken = "/tmp/grimbots.rules.broken.yml"
    prom.run(
        f'sed \'s/max by (queue) (grimbots_queue_workers{{job="grimbots"}}) == 0/'
        f'max by (queue) (grimbots_queue_workers{{job="grimbots"}}) == 1/\' {RULES} > {broken}'
    )
    assert prom.file(broken).content_string != prom.file(RULES).content_string
    out = prom.run(f"{CHECK_RULES} {broken}")
    assert out.rc != 0 and "NoWorkersForQueue" in out.stdout + out.stderr


def test_configs_hold_the_token_unreadable_to_others(prom):
    config = prom.file("/etc/prometheus/alertmanager.yml")
    assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640)
    assert "100000003:molecule-alertmanager-bot" in config.content_string
    assert prom.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def test_watchdog_reaches_the_heartbeat_chat_only(app, sandbox):
    def heartbeat():
        return [m for m in messages(app, sandbox, WATCHDOG_CHAT) if "Watchdog" in m["text"]]

    beats = wait_until(heartbeat, 60, "the Watchdog at the heartbeat chat", 1)
    assert beats[0]["params"].get("disable_notification") in (True, "true")
    assert not [m for m in messages(app, sandbox, OPERATORS_CHAT) if "Watchdog" in m["text"]]


def test_no_workers_for_queue_reaches_telegram_and_resolves(
    app, sandbox, prom, prometheus, alertmanager
):
    started = time.time()
    app.run_expect([0], "systemctl stop 'rq-worker@gateway-*'")
    try:

        def alert():
            return [
                m
                for m in messages(app, sandbox, OPERATORS_CHAT, since=started)
                if "NoWorkersForQueue" in m["text"] and "FIRING" in m["text"]
            ]

        fired = wait_for_alert(
            alert, "NoWorkersForQueue at the Telegram stand-in", prom, prometheus, alertmanager
        )
        assert "gateway" in fired[0]["text"]
        print(f"\nmessage at the stand-in:\n{fired[0]['text']}")
        measure("alert_delivery_seconds", round(fired[0]["time"] - started, 1))
    finally:
        restarted = time.time()
        app.run_expect([0], "systemctl start rq-worker@gateway-1 rq-worker@gateway-2")

    def resolved():
        return [
            m
            for m in messages(app, sandbox, OPERATORS_CHAT, since=restarted)
            if "NoWorkersForQueue" in m["text"] and "RESOLVED" in m["text"]
        ]

    done = wait_for_alert(
        resolved, "the resolved NoWorkersForQueue message", prom, prometheus, alertmanager
    )
    measure("resolved_delivery_seconds", round(done[0]["time"] - restarted, 1))


def test_instance_down_silences_that_hosts_other_alerts(app, prom, prometheus, alertmanager):
    host = inventory_groups()["app"][0]
    app.run_expect([0], "systemctl stop prometheus-node-exporter")
    try:
        wait_until(lambda: firing(prom, prometheus, "InstanceDown"), 60, "InstanceDown firing", 1)
        # Another alert about the same host, straight into Alertmanager.
        prom.run_expect(
            [0],
            f"amtool --alertmanager.url={alertmanager} alert add ProbeAlert "
            f"host={host} severity=warning --annotation=summary=probe",
        )

        def suppressed():
            alerts = get_json(prom, f"{alertmanager}/api/v2/alerts?filter=alertname%3DProbeAlert")
            return alerts and alerts[0]["status"]["state"] == "suppressed" and alerts[0]

        probe = wait_until(suppressed, 30, "the probe alert inhibited by InstanceDown", 0.5)
        assert probe["status"]["inhibitedBy"]
    finally:
        app.run_expect([0], "systemctl start prometheus-node-exporter")


def test_grafana_tasks_pass_in_check_mode():
    """Grafana's repository is unreachable here: its tasks (tag monitoring_grafana) run in
    check mode only; the rest of the role is proven by converge and idempotence."""
    playbook = SCENARIO / "grafana-check.yml"
    result = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            str(playbook),
            "--check",
            "--diff",
            "--tags",
            "monitoring_grafana",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "grafana-datasource" in result.stdout or "datasources/grimbots.yml" in result.stdout


# ---- the app host: a fresh install on the role's defaults, without a PSP --------------
def test_the_app_runs_without_a_psp_and_its_maintenance_sweep_runs(app):
    """No PIX setting, no PSP reconciliation timer, /health says so; the always-on
    maintenance sweep runs all the same (it needs no PSP and no worker)."""
    assert "GRIMBOTS_PIX_" not in app.file("/etc/grimbots/grimbots.env").content_string
    assert not app.file("/etc/systemd/system/grimbots-reconcile.timer").exists
    web = f"http://{private_address(app)}:8000/health"
    assert get_json(app, web)["checks"]["pix"] == {"configured": False, "provider": None}
    assert app.service("grimbots-maintenance.timer").is_enabled
    assert app.service("grimbots-maintenance.timer").is_running
    since = time.time()
    app.check_output("systemctl start grimbots-maintenance.service")
    props = app.check_output(
        "systemctl show -p Result -p ExecMainStatus grimbots-maintenance.service"
    )
    assert "Result=success" in props and "ExecMainStatus=0" in props, props
    # It swept, or the timer's run of this same minute had (one sweep per minute).
    assert get_json(app, web)["checks"]["maintenance"]["last_run_seconds_ago"] <= 65
    swept = json.loads(app.check_output("grimbots-manage maintenance --force"))
    assert swept["swept"] is True and "failed jobs requeued" in swept, swept

    # /health answers from its newest report and refreshes it in the background
    # (grimbots.health.RecentCheck): the forced sweep shows once a refresh has run.
    def last_run_at() -> float:
        report = get_json(app, web)
        stamp = datetime.fromisoformat(report["timestamp"].replace("Z", "+00:00"))
        return stamp.timestamp() - report["checks"]["maintenance"]["last_run_seconds_ago"]

    wait_until(lambda: last_run_at() >= since - 1, 30, "/health showing the forced sweep", 0.5)
