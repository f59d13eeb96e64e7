"""`grimbots audit` on a small real flow (updates and a payment), and the operator commands
around deliveries and reconciliation, all through the command line."""

from __future__ import annotations

import re
import subprocess

import httpx
import orjson
from conftest import without_psp
from grimbots import outbox
from grimbots.lab.servers import GRIMBOTS, Process, free_port, port_open, wait_until
from grimbots.models import OutboxMessage, Payment
from grimbots.queues import ALL_QUEUES
from payment_support import PIX_PATH, sent_texts
from sqlalchemy import delete, select
from support import buy_callback, post_update, start_message


def grimbots(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([GRIMBOTS, *args], env=env, capture_output=True, text=True, timeout=120)


def test_audit_passes_on_a_real_flow_and_catches_a_duplicate_delivery(
    env, bot, services, telegram, psp, start_web, start_worker, tmp_path
):
    base_url = start_web(workers=2)
    start_worker(*ALL_QUEUES)
    user = 9100
    buy = buy_callback(2, user, bot.offer_id)
    buy["callback_query"]["id"] = "2"  # the load generator's convention: id = update_id
    sent = []
    for update_id, kind, update in ((1, "start", start_message(1, user)), (2, "buy", buy)):
        status = post_update(base_url, bot.id, bot.secret, update).status_code
        sent.append(
            {"bot": bot.id, "update_id": update_id, "chat": user, "kind": kind, "status": status}
        )
    wait_until(lambda: sent_texts(telegram, user, "PIX for"), what="PIX code")
    with services.db.session() as session:
        payment = session.scalar(select(Payment))
    psp.pay(txid=payment.txid, times=3, notify_url=base_url + PIX_PATH, wait=True)
    wait_until(lambda: sent_texts(telegram, user, "access="), what="delivery")
    sent_file = tmp_path / "sent.jsonl"
    sent_file.write_bytes(b"\n".join(orjson.dumps(s) for s in sent) + b"\n")

    audit = ("audit", "--sent", str(sent_file), "--drain-timeout", "30")
    result = grimbots(env, *audit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK, 0 lost, 0 duplicated" in result.stdout
    assert re.search(r"payments confirmed \(paid \+ paid_late\) +1\n", result.stdout)
    assert re.search(r"delivery messages at the stand-in +1\n", result.stdout)
    # The PSP called three times for one PIX: three callbacks, one event.
    assert re.search(r"PSP callbacks sent \(answered 200\) +3\n", result.stdout)
    assert re.search(r"payment events recorded +1\n", result.stdout)

    listed = orjson.loads(grimbots(env, "deliveries", "list", "--bot", str(bot.id)).stdout)
    assert [(d["payment"], d["status"]) for d in listed] == [(str(payment.id), "sent")]
    assert orjson.loads(grimbots(env, "deliveries", "list", "--status", "failed").stdout) == []

    # An operator's re-send is a new message with its own key; the audit expects it.
    resend = grimbots(
        env, "deliveries", "resend", "--payment", str(payment.id), "--reason", "buyer lost it"
    )
    assert resend.returncode == 0, resend.stderr
    assert "operator re-sends a delivery" in resend.stderr and "buyer lost it" in resend.stderr
    assert len(sent_texts(telegram, user, "access=")) == 2
    assert grimbots(env, *audit).returncode == 0

    # A worker killed during the call leaves its row in `sending`: delivered if the call
    # arrived, lost if it never left.
    with services.db.session() as session:
        welcome = session.scalar(
            select(OutboxMessage).where(
                OutboxMessage.chat_id == user, OutboxMessage.kind == "welcome"
            )
        )
        welcome.status = "sending"
        welcome_id, lead_id = welcome.id, welcome.lead_id
    result = grimbots(env, *audit)
    assert result.returncode == 0, result.stdout
    assert re.search(r"messages interrupted by a killed worker +1\n", result.stdout)
    assert re.search(r"of which reached the stand-in +1\n", result.stdout)
    # A call that timed out after it went out is failed and never re-sent (outcome unknown):
    # the same, delivered if it arrived. Failed for any other reason, it was not sent.
    for error, timed_out in ((f"{outbox.OUTCOME_UNKNOWN}: ReadTimeout", 1), ("400: bad", 0)):
        with services.db.session() as session:
            row = session.get(OutboxMessage, welcome_id)
            row.status, row.error = "failed", error
        result = grimbots(env, *audit)
        assert result.returncode == (0 if timed_out else 1), result.stdout
        counted = rf"messages whose call timed out \(outcome unknown\) +{timed_out}\n"
        assert re.search(counted, result.stdout), result.stdout
    with services.db.session() as session:
        session.get(OutboxMessage, welcome_id).status = "sending"
    with services.db.session() as session:
        session.add(
            OutboxMessage(
                idempotency_key=f"pix:never-left:{user}",
                bot_id=bot.id,
                lead_id=lead_id,
                chat_id=user,
                kind="lost",
                method="sendMessage",
                payload=orjson.dumps({"chat_id": user, "text": "never left"}).decode(),
                status="sending",
            )
        )
    result = grimbots(env, *audit)
    assert result.returncode == 1 and "outcome unknown, stand-in received) differ" in result.stdout
    with services.db.session() as session:
        session.execute(delete(OutboxMessage).where(OutboxMessage.kind == "lost"))

    # A delivery message that reaches Telegram once more than the outbox sent it (what a
    # blind retry of a timed-out send would do) must fail the audit.
    (delivered,) = [
        c for c in telegram.calls("sendMessage", chat_id=user) if "access=" in (c["text"] or "")
    ][:1]
    httpx.post(
        f"{telegram.url}/bot{bot.token}/sendMessage", json=delivered["params"]
    ).raise_for_status()
    result = grimbots(env, *audit)
    assert result.returncode == 1
    assert "FAILED" in result.stdout and str(payment.id) in result.stdout

    # A stand-in that forgot the run (restarted since) is named as the likely cause.
    httpx.delete(f"{telegram.url}/_sandbox/calls").raise_for_status()
    result = grimbots(env, *audit)
    assert result.returncode == 1 and "was it restarted" in result.stdout


def test_reconcile_command_queues_once_per_period(env, redis_client):
    first = orjson.loads(grimbots(env, "reconcile", "--interval", "3600").stdout)
    again = orjson.loads(grimbots(env, "reconcile", "--interval", "3600").stdout)
    assert first["queued"] is True and first["job_id"].startswith("reconcile-")
    assert again == {"queued": False, "job_id": None}
    assert redis_client.lrange("rq:queue:gateway", 0, -1) == [first["job_id"].encode()]
    inline = grimbots(env, "reconcile", "--inline")
    assert inline.returncode == 0, inline.stderr
    assert orjson.loads(inline.stdout) == {}  # no charge pending long enough to ask about


def test_maintenance_command_sweeps_once_per_period_without_a_psp(env, redis_client):
    env = without_psp(env)
    first = orjson.loads(grimbots(env, "maintenance", "--interval", "3600").stdout)
    again = orjson.loads(grimbots(env, "maintenance", "--interval", "3600").stdout)
    assert first == {
        "swept": True,
        "abandoned jobs": 0,
        "failed jobs requeued": 0,
        "orphaned messages": 0,
        "events requeued": 0,
    }
    assert again == {"swept": False}
    forced = orjson.loads(grimbots(env, "maintenance", "--force").stdout)
    assert forced["swept"] is True
    assert float(redis_client.hget("grimbots:maintenance", "last_run")) > 0


def test_sandbox_pix_command_serves_api_pix(env):
    port = free_port()
    proc = Process(
        [GRIMBOTS, "sandbox", "pix", "--port", str(port), "--client-id", "me"],
        env | {"GRIMBOTS_SANDBOX_PIX_CLIENT_SECRET": "s3cret"},
        __import__("pathlib").Path(f"/tmp/pix-sandbox-{port}.log"),
    )
    try:
        wait_until(lambda: port_open(port), what="pix sandbox")
        token = httpx.post(
            f"http://127.0.0.1:{port}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=("me", "s3cret"),
        )
        assert token.status_code == 200 and token.json()["access_token"]
    finally:
        proc.stop()
