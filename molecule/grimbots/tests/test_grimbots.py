"""The grimbots role: the app serves, its worker fleet consumes, systemd keeps both alive.

Behaviour, not files: real HTTP calls to gunicorn, a real update through Redis and an RQ
worker to the Telegram stand-in, a charge paid at the PSP stand-in and its access link
delivered, the reconciliation timer's job run by a gateway worker, processes killed with
SIGKILL and timed until they serve again. Timings are printed as `MEASURE name=value` lines.
"""

import json
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from infra import (
    host_in,
    inventory_groups,
    measure,
    output,
    private_address,
    run_playbook,
    wait_until,
)

CONVERGE = "molecule/grimbots/converge.yml"
FLEET = {"tasks": 5, "gateway": 3, "webhook": 3}
APP_USER = "grimbots"
REDIS_PASSWORD = "molecule-redis-password"
ALERT_CHAT_ID = -1000000000042
SANDBOX_PORT = 8081
PIX_PORT = 8082
RECOVERY_LIMIT = 15.0


@pytest.fixture(scope="module")
def app():
    return host_in("app")


@pytest.fixture(scope="module")
def redis():
    return host_in("redis")


@pytest.fixture(scope="module")
def address(app):
    """The app host's private address: gunicorn and the stand-in listen there."""
    return private_address(app)


@pytest.fixture(scope="module")
def web(address):
    return f"http://{address}:8000"


@pytest.fixture(scope="module")
def sandbox(address):
    return f"http://{address}:{SANDBOX_PORT}"


@pytest.fixture(scope="module")
def pix(address):
    return f"http://{address}:{PIX_PORT}"


def http(host, method, url, body=None, headers=()):
    """(status, text) of one request made from inside `host`; status 0 = no answer."""
    cmd = ["curl", "-sS", "-m", "5", "-X", method, "-w", "\\n%{http_code}"]
    for header in headers:
        cmd += ["-H", header]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    cmd.append(url)
    out = host.run(shlex.join(cmd))
    text, _, code = out.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), text


def health(host, web):
    status, text = http(host, "GET", f"{web}/health")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, {}


def main_pid(host, unit):
    return int(host.check_output(f"systemctl show -p MainPID --value {unit}") or 0)


def active_instances(host):
    out = host.check_output(
        "systemctl list-units --plain --no-legend --state=active 'rq-worker@*.service'"
    )
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def per_queue(instances):
    counts = {}
    for unit in instances:
        queue = unit.split("@", 1)[1].rsplit("-", 1)[0]
        counts[queue] = counts.get(queue, 0) + 1
    return counts


def calls(host, sandbox, chat_id):
    query = f"method=sendMessage&chat_id={chat_id}"
    status, text = http(host, "GET", f"{sandbox}/_sandbox/calls?{query}")
    assert status == 200, text
    return json.loads(text)["calls"]


def charges(host, pix):
    status, text = http(host, "GET", f"{pix}/_sandbox/charges")
    assert status == 200, text
    return json.loads(text)["charges"]


def queues_drained(redis, names) -> bool:
    """Nothing left to do on these queues: no job waiting, started or scheduled (a retry);
    a queue of size 0 can still have a job running or due again in a few seconds."""
    commands = "".join(
        f"LLEN rq:queue:{q}\\nZCARD rq:wip:{q}\\nZCARD rq:scheduled:{q}\\n" for q in names
    )
    out = redis.check_output(
        f"printf '{commands}' | redis-cli -h 127.0.0.1 --pass {REDIS_PASSWORD} --no-auth-warning"
    )
    return sum(int(n) for n in out.split()) == 0


def unit_properties(host, unit, *names):
    args = " ".join(f"-p {name}" for name in names)
    out = host.check_output(f"systemctl show {args} {unit}")
    return dict(line.split("=", 1) for line in out.splitlines())


def redis_cli(redis, args):
    return redis.check_output(
        f"redis-cli -h 127.0.0.1 --pass {REDIS_PASSWORD} --no-auth-warning {args}"
    ).strip()


def manage(app, args):
    return json.loads(app.check_output(f"grimbots-manage {args}"))


def app_python(app, code):
    """Python code run on the app host as the app (its venv and environment)."""
    return app.check_output(f"/usr/local/sbin/grimbots-manage --exec python -c {shlex.quote(code)}")


def add_bot(app, name, token, secret, welcome=None):
    """`bots add`, the credentials on stdin as the CLI requires (never on a command line)."""
    credentials = shlex.quote(json.dumps({"token": token, "secret": secret}))
    welcome_arg = f" --welcome {shlex.quote(welcome)}" if welcome else ""
    return json.loads(
        app.check_output(
            f"echo {credentials} | grimbots-manage bots add --name {name} --credentials -"
            + welcome_arg
        )
    )


def test_fleet_has_the_configured_size(app):
    assert app.check_output("systemctl is-active grimbots.target") == "active"
    instances = active_instances(app)
    print(f"\nactive workers: {instances}")
    assert per_queue(instances) == FLEET


def test_units_run_as_the_app_user(app):
    account = app.user(APP_USER)
    assert account.shell == "/usr/sbin/nologin"
    units = [
        "grimbots-web.service",
        "grimbots-sandbox@telegram.service",
        "grimbots-sandbox@pix.service",
        *active_instances(app),
    ]
    for unit in units:
        pid = main_pid(app, unit)
        assert pid, f"{unit} has no main process"
        assert app.check_output(f"ps -o user= -p {pid}") == APP_USER, unit
    # gunicorn's own workers too, and nothing of the app runs as root.
    users = app.check_output(f"ps -o user= --ppid {main_pid(app, 'grimbots-web.service')}").split()
    assert users and set(users) == {APP_USER}


def test_health_is_healthy_with_every_queue_served(app, web):
    def served():
        status, report = health(app, web)
        queues = report.get("checks", {}).get("queues", {})
        ok = status == 200 and report.get("status") == "healthy"
        return ok and all(queues.get(q, {}).get("workers") == n for q, n in FLEET.items())

    wait_until(served, 30, "/health healthy with every configured worker registered")
    status, report = health(app, web)
    print(f"\n/health {status}: {json.dumps(report['checks']['queues'])}")


def test_update_gets_exactly_one_reply(app, redis, web, sandbox):
    secret = "molecule-webhook-secret"
    bot = add_bot(app, "molecule", "100000001:molecule-bot", secret, "Hello from molecule")
    chat_id = 5_000_000 + int(time.time()) % 1_000_000
    update = {
        "update_id": int(time.time() * 1000),
        "message": {
            "message_id": 1,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "Molecule"},
            "text": "/start",
        },
    }
    url = f"{web}/webhook/telegram/{bot['id']}"
    header = f"X-Telegram-Bot-Api-Secret-Token: {secret}"
    started = time.monotonic()
    status, text = http(app, "POST", url, update, [header])
    assert status == 200, text
    wait_until(lambda: calls(app, sandbox, chat_id), 15, "the bot's reply at the stand-in")
    measure("update_to_reply_seconds", round(time.monotonic() - started, 2))

    # Telegram retries: the same update again must not produce a second message.
    status, text = http(app, "POST", url, update, [header])
    assert status == 200, text

    wait_until(lambda: queues_drained(redis, ["tasks"]), 15, "the tasks queue to drain")
    replies = calls(app, sandbox, chat_id)
    assert len(replies) == 1, replies
    assert replies[0]["text"] == "Hello from molecule"


def test_published_ports_reach_the_app_and_the_stand_ins():
    """127.0.0.1 of the controller, a random port each: what the load test uses."""
    container = inventory_groups()["app"][0]
    for port, path in (
        (8000, "/health"),
        (SANDBOX_PORT, "/_sandbox/calls"),
        (PIX_PORT, "/_sandbox/charges"),
    ):
        out = subprocess.run(
            ["podman", "port", container, str(port)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert len(out) == 1 and out[0].startswith("127.0.0.1:"), (port, out)
        with urllib.request.urlopen(f"http://{out[0]}{path}", timeout=5) as answer:
            assert answer.status == 200, (port, path)


def test_paid_charge_delivers_the_access_link_once(app, redis, web, sandbox, pix):
    """A "buy", its charge at the PSP, the PSP's paid callback (sent twice, as PSPs retry)
    and exactly one message with the access link."""
    secret = "molecule-pix-bot-secret"
    bot = add_bot(app, "molecule-pix", "100000003:molecule-pix", secret)
    offer = manage(
        app,
        f"offers add --bot {bot['id']} --name 'Molecule course' --price-cents 1990 "
        "--access-link https://example.invalid/molecule-course",
    )
    known = {charge["txid"] for charge in charges(app, pix)}
    chat_id = 6_000_000 + int(time.time()) % 1_000_000
    update_id = int(time.time() * 1000)
    user = {"id": chat_id, "is_bot": False, "first_name": "Buyer"}
    update = {
        "update_id": update_id,
        "callback_query": {
            "id": str(update_id),
            "from": user,
            "message": {
                "message_id": 1,
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private"},
            },
            "chat_instance": str(chat_id),
            "data": f"buy:{offer['id']}",
        },
    }
    started = time.monotonic()
    header = f"X-Telegram-Bot-Api-Secret-Token: {secret}"
    status, text = http(app, "POST", f"{web}/webhook/telegram/{bot['id']}", update, [header])
    assert status == 200, text

    def new_charges():
        return [charge for charge in charges(app, pix) if charge["txid"] not in known]

    created = wait_until(new_charges, 20, "the charge at the PSP stand-in")
    measure("buy_to_charge_seconds", round(time.monotonic() - started, 2))
    assert len(created) == 1 and created[0]["valor"]["original"] == "19.90", created
    txid = created[0]["txid"]

    started = time.monotonic()
    status, text = http(
        app, "POST", f"{pix}/_sandbox/pay", {"txid": txid, "times": 2, "wait": True}
    )
    assert status == 200 and json.loads(text)["results"] == [200, 200], text

    def access_messages():
        return [m for m in calls(app, sandbox, chat_id) if "access=" in m.get("text", "")]

    wait_until(access_messages, 20, "the access link at the Telegram stand-in")
    measure("paid_to_access_link_seconds", round(time.monotonic() - started, 2))
    wait_until(
        lambda: queues_drained(redis, ("webhook", "gateway", "tasks")), 15, "the queues to drain"
    )
    delivered = access_messages()
    assert len(delivered) == 1, delivered
    assert "https://example.invalid/molecule-course" in delivered[0]["text"], delivered
    assert [c["status"] for c in charges(app, pix) if c["txid"] == txid] == ["CONCLUIDA"]


def test_reconcile_timer_runs_a_reconciliation_every_minute(app, redis):
    assert app.service("grimbots-reconcile.timer").is_enabled
    assert app.check_output("systemctl is-active grimbots-reconcile.timer") == "active"

    # Converge and idempotence took more than a minute: it has normally run already.
    def ran():
        props = unit_properties(
            app,
            "grimbots-reconcile.service",
            "Result",
            "ExecMainStatus",
            "ExecMainExitTimestampMonotonic",
        )
        return props if props["ExecMainExitTimestampMonotonic"] != "0" else None

    props = wait_until(ran, 75, "grimbots-reconcile.service to run from its timer", interval=1)
    assert props["Result"] == "success" and props["ExecMainStatus"] == "0", props
    # It printed the job it queued on gateway; a gateway worker runs it.
    out = app.check_output("journalctl -u grimbots-reconcile.service -o cat --no-pager -n 50")
    queued = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    job_ids = [q["job_id"] for q in queued if q.get("job_id")]
    assert job_ids, out
    job_id = job_ids[-1]
    wait_until(
        lambda: redis_cli(redis, f"HGET rq:job:{job_id} status") == "finished",
        30,
        f"gateway to finish {job_id}",
    )


def test_killed_gunicorn_master_serves_again_within_15s(app, web):
    old = main_pid(app, "grimbots-web.service")
    app.check_output(f"kill -9 {old}")
    started = time.monotonic()

    def serving():
        pid = main_pid(app, "grimbots-web.service")
        return pid not in (0, old) and health(app, web)[0] == 200

    wait_until(serving, RECOVERY_LIMIT, "a new gunicorn master answering /health with 200")
    measure("web_kill9_to_serving_seconds", round(time.monotonic() - started, 2))


def test_web_restart_refuses_no_connection(app, web):
    """systemd holds the listening socket: during a restart, requests wait, none fails."""
    old = main_pid(app, "grimbots-web.service")
    script = (
        "systemctl restart --no-block grimbots-web.service; codes=''; "
        'for i in $(seq 40); do codes="$codes $(curl -s -o /dev/null -m 15 '
        f"-w '%{{http_code}}' {web}/health)\"; sleep 0.1; done; echo $codes"
    )
    started = time.monotonic()
    codes = app.check_output(script).split()
    assert codes == ["200"] * 40, codes
    wait_until(
        lambda: main_pid(app, "grimbots-web.service") not in (0, old),
        RECOVERY_LIMIT,
        "a new gunicorn master",
    )
    measure("web_restart_40_requests_seconds", round(time.monotonic() - started, 2))


def test_killed_worker_consumes_again_within_15s(app, redis):
    # A tasks worker that runs alone in its cgroup. The one worker per queue that holds
    # RQ's scheduler lock also has a scheduler child process; in these test containers
    # (cgroup v1, where systemd is not told that a cgroup became empty) systemd then waits
    # the whole TimeoutStopSec for that child before restarting. On a cgroup v2 host both
    # kinds come back equally fast. docs/operations.md, "Supervision", has the details.
    def lone(unit):
        return len(app.check_output(f"systemd-cgls --no-pager -u {unit}").splitlines()) == 2

    unit = next(u for u in active_instances(app) if u.startswith("rq-worker@tasks-") and lone(u))
    hostname = app.check_output("hostname")
    old = main_pid(app, unit)
    app.check_output(f"kill -9 {old}")
    started = time.monotonic()

    def consuming():
        pid = main_pid(app, unit)
        if pid in (0, old):
            return False
        # The app names workers HOST.PID.QUEUES; RQ marks a worker idle while it waits
        # on its queue, so "idle" or "busy" means this new process is consuming tasks.
        key = f"rq:worker:{hostname}.{pid}.tasks"
        registered = redis_cli(redis, f"SISMEMBER rq:workers:tasks {key}") == "1"
        return registered and redis_cli(redis, f"HGET {key} state") in ("idle", "busy")

    wait_until(consuming, RECOVERY_LIMIT, f"{unit} back and registered on the tasks queue")
    measure(f"worker_kill9_to_consuming_seconds[{unit}]", round(time.monotonic() - started, 2))
    assert per_queue(active_instances(app)) == FLEET


def test_a_stop_that_lands_in_a_log_write_still_stops_the_worker(app):
    # Seen here: SIGTERM reached a worker while it wrote a log line, RQ's handler logged
    # into the same stream, the RuntimeError lost the stop, and systemd SIGKILLed the
    # worker 75 s later. On the host's own Python, which is where it happened.
    script = (Path(__file__).parent / "signal_in_a_log_write.py").read_text()
    ran = app.run(f"/usr/local/sbin/grimbots-manage --exec python -c {shlex.quote(script)}")
    assert ran.rc == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["returncode"] == 0, result["output"]
    assert "reentrant call" not in result["output"], result["output"]
    assert "stopping on request" in result["output"], result["output"]
    assert result["jobs_left"] > 10_000, result  # it stopped, not worked the queue through


def test_an_app_restart_does_not_wait_for_a_busy_worker(app, web):
    """`systemctl restart grimbots.target` (every deploy): the new web serves while a
    worker still finishes its job; it used to wait for the slowest one (up to 75 s)."""
    # A 45 s job: its worker's warm shutdown waits for it. The web must serve well before it
    # ends (its own restart takes 5-15 s on a loaded box), while that worker still stops.
    connect = "import os, redis, rq; r = redis.Redis.from_url(os.environ['GRIMBOTS_REDIS_URL']);"
    app_python(
        app, connect + "rq.Queue('tasks', connection=r).enqueue('time.sleep', 45, job_timeout=90)"
    )
    wait_until(
        lambda: (
            app_python(
                app,
                connect
                + "print(rq.registry.StartedJobRegistry('tasks', connection=r).get_job_ids())",
            )
            != "[]"
        ),
        RECOVERY_LIMIT,
        "a worker busy with the long job",
    )
    old_web = main_pid(app, "grimbots-web.service")
    started = time.monotonic()
    app.check_output("systemctl restart --no-block grimbots.target")

    def serving():
        pid = main_pid(app, "grimbots-web.service")
        return pid not in (0, old_web) and health(app, web)[0] in (200, 503)

    wait_until(serving, 30, "the new web serving while a worker still stops")
    measure("app_restart_to_web_serving_seconds", round(time.monotonic() - started, 2))
    stopping = app.check_output(
        "systemctl list-units --plain --no-legend --state=deactivating 'rq-worker@*'"
    )
    assert stopping.strip(), "no worker was still finishing its job: the test proved nothing"
    wait_until(
        lambda: per_queue(active_instances(app)) == FLEET and health(app, web)[0] == 200,
        120,
        "the whole fleet back",
    )


def test_health_alert_reaches_telegram(app, web, sandbox):
    # Run by hand, with the timer paused and its memory cleared, so the test is alone.
    app.check_output("systemctl stop grimbots-health-alert.timer")
    app.check_output("rm -f /var/lib/grimbots-health-alert/state.json")
    before = len(calls(app, sandbox, ALERT_CHAT_ID))
    try:
        # The socket too: while it listens, a connection would start the web again.
        app.check_output("systemctl stop grimbots-web.socket grimbots-web.service")
        app.run("systemctl start grimbots-health-alert.service")
        alerts = calls(app, sandbox, ALERT_CHAT_ID)[before:]
        assert len(alerts) == 1 and alerts[0]["text"].startswith("ALERT"), alerts
        print(f"\nalert: {alerts[0]['text']}")
    finally:
        app.check_output("systemctl start grimbots-web.socket grimbots-web.service")
    wait_until(lambda: health(app, web)[0] == 200, RECOVERY_LIMIT, "the web back")
    app.check_output("systemctl start grimbots-health-alert.service")
    messages = calls(app, sandbox, ALERT_CHAT_ID)[before:]
    assert [m["text"].split()[0] for m in messages] == ["ALERT", "RECOVERED"], messages
    app.check_output("systemctl start grimbots-health-alert.timer")
    assert app.check_output("systemctl is-active grimbots-health-alert.timer") == "active"


@pytest.mark.parametrize(
    "unit",
    [
        "grimbots-web.service",
        "rq-worker@tasks-1.service",
        "grimbots-sandbox@telegram.service",
        "grimbots-sandbox@pix.service",
        "grimbots-health-alert.service",
        "grimbots-reconcile.service",
    ],
)
def test_units_are_hardened(app, unit):
    out = app.check_output(f"systemd-analyze security --no-pager {unit}")
    last = out.splitlines()[-1]  # "→ Overall exposure level for UNIT: 1.9 OK :-)"
    score = float(last.split(":", 1)[1].split()[0])
    measure(f"exposure[{unit}]", score)
    assert score <= 2.5, last


def test_fleet_scales_down_to_a_new_size(app):
    """Re-run the role with fewer workers: the surplus instances stop and leave the fleet;
    then back to the scenario's fleet, so the tests after this one find it as it was."""
    smaller = {"tasks": 3, "gateway": 2, "webhook": 2}
    tags = ("--limit", "app", "--tags", "grimbots_configure,grimbots_run")
    started = time.monotonic()
    try:
        run = run_playbook(CONVERGE, *tags, extra_vars={"grimbots_rq_workers": smaller})
        assert run.returncode == 0, output(run)
        measure("scale_down_run_seconds", round(time.monotonic() - started, 1))
        assert per_queue(active_instances(app)) == smaller
        wants = app.check_output("systemctl show -p Wants --value grimbots.target").split()
        assert sorted(w for w in wants if w.startswith("rq-worker@")) == sorted(
            f"rq-worker@{q}-{i}.service" for q, n in smaller.items() for i in range(1, n + 1)
        )
        assert (
            app.check_output("systemctl is-active rq-worker@tasks-5.service || true") == "inactive"
        )
    finally:
        # Whatever failed above: the next test finds the scenario's fleet.
        run = run_playbook(CONVERGE, *tags)
    assert run.returncode == 0, output(run)
    assert per_queue(active_instances(app)) == FLEET
