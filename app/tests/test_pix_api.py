"""The API Pix adapter against the PSP stand-in: real HTTP on 127.0.0.1, nothing mocked."""

from __future__ import annotations

import socket
import time
import uuid

import httpx
import pytest
from grimbots.lab.servers import wait_until
from grimbots.pix import CONCLUIDA, REMOVIDA_PELO_PSP, ApiPixAdapter, PixSettings, txid_for
from grimbots.pix.brcode import has_valid_crc, parse_tlv
from pix_fixtures import HTTP, PIX_KEY, Receiver, adapter_for, start_sandbox


@pytest.fixture
def adapter_read_timeout() -> float:
    return 0.5  # the slow-PSP tests' stand-in answers after 1.5 s


def calls(sandbox, **query) -> list[dict]:
    return HTTP.get(f"{sandbox.base_url}/_sandbox/calls", params=query).json()["calls"]


def control(sandbox, path: str, body: dict) -> httpx.Response:
    return HTTP.post(f"{sandbox.base_url}/_sandbox/{path}", json=body)


def new_txid() -> str:
    return txid_for(uuid.uuid4())


def test_charge_lifecycle_create_status_pay_status(sandbox, adapter):
    txid = new_txid()
    created = adapter.create_charge(txid, 1234, 900, "Curso completo")
    assert created.outcome == "ok" and created.status_code == 201
    charge = created.value
    assert (charge.txid, charge.status, charge.amount_cents) == (txid, "ATIVA", 1234)
    assert (charge.expires_at - charge.created_at).total_seconds() == 900

    pending = adapter.charge_status(txid)
    assert pending.ok and pending.value.is_active and not pending.value.is_paid
    assert pending.value.payments == ()

    paid_at_psp = control(sandbox, "pay", {"txid": txid}).json()["pix"][0]
    paid = adapter.charge_status(txid)
    assert paid.ok and paid.value.status == CONCLUIDA and paid.value.is_paid
    (payment,) = paid.value.payments
    assert payment.end_to_end_id == paid_at_psp["endToEndId"]
    assert payment.amount_cents == 1234 == paid.value.paid_cents
    assert payment.paid_at.tzinfo is not None

    put = calls(sandbox, endpoint="cob.put")[0]["body"]
    assert put == {
        "calendario": {"expiracao": 900},
        "valor": {"original": "12.34"},
        "chave": PIX_KEY,
        "solicitacaoPagador": "Curso completo",
    }


def test_token_is_fetched_once_and_reused(sandbox, adapter):
    for _ in range(5):
        assert adapter.create_charge(new_txid(), 500).ok
    assert adapter.charge_status(new_txid()).not_found
    assert len(calls(sandbox, endpoint="token")) == 1
    assert len(calls(sandbox, endpoint="cob.put")) == 5


def test_token_is_refreshed_before_it_expires():
    server = start_sandbox(token_ttl=1)  # refresh margin: a tenth of its life
    adapter = adapter_for(server)
    try:
        assert adapter.create_charge(new_txid(), 500).ok
        assert adapter.create_charge(new_txid(), 500).ok
        assert len(calls(server, endpoint="token")) == 1
        wait_until(lambda: time.monotonic() >= adapter._token_expires, 2, "token expiry")
        assert adapter.create_charge(new_txid(), 500).ok
        assert len(calls(server, endpoint="token")) == 2
        assert all(c["status"] == 201 for c in calls(server, endpoint="cob.put"))
    finally:
        adapter.close()
        server.close()


def test_revoked_token_is_replaced_once_on_403(sandbox, adapter):
    """The spec answers a caller it refuses with 403 AcessoNegado: a cached token may have
    been revoked, so one new token is fetched and the call made once more."""
    assert adapter.create_charge(new_txid(), 500).ok
    control(sandbox, "faults", {"revoke_tokens": True})
    assert adapter.create_charge(new_txid(), 500).ok
    assert [c["status"] for c in calls(sandbox, endpoint="cob.put")] == [201, 403, 201]
    assert len(calls(sandbox, endpoint="token")) == 2


def test_put_twice_with_the_same_txid_is_one_charge(sandbox, adapter):
    txid = new_txid()
    first = adapter.create_charge(txid, 2500)
    second = adapter.create_charge(txid, 2500)
    assert first.ok and second.ok
    # The spec's PUT answers a used txid 400 CobOperacaoInvalida; the adapter then finds
    # the charge it wants with GET.
    assert (first.status_code, second.status_code) == (201, 200)
    assert [c["status"] for c in calls(sandbox, endpoint="cob.put")] == [201, 400]
    assert first.value == second.value
    charges = HTTP.get(f"{sandbox.base_url}/_sandbox/charges").json()["charges"]
    assert [c["txid"] for c in charges] == [txid]


def test_same_txid_with_another_amount_is_rejected(sandbox, adapter):
    txid = new_txid()
    assert adapter.create_charge(txid, 2500).ok
    other = adapter.create_charge(txid, 2600)
    assert other.outcome == "rejected" and other.status_code == 409  # ours: not the charge
    assert "2500" in other.description or "25.00" in other.description


def test_br_code_of_a_charge_is_dynamic(sandbox, adapter):
    """As PSPs answer a `cob`: field 26-25 holds the charge's location, 62-05 is "***"."""
    txid = new_txid()
    code = adapter.create_charge(txid, 4990).value.pix_copy_paste
    assert has_valid_crc(code)
    fields = parse_tlv(code)
    assert fields["54"] == "49.90"
    assert parse_tlv(fields["62"])["05"] == "***"
    (charge,) = HTTP.get(f"{sandbox.base_url}/_sandbox/charges", params={"txid": txid}).json()[
        "charges"
    ]
    assert parse_tlv(fields["26"]) == {"00": "br.gov.bcb.pix", "25": charge["location"]}
    assert charge["loc"] == {
        "id": charge["loc"]["id"],
        "location": charge["location"],
        "tipoCob": "cob",
    }


def test_server_error_is_transient_and_changes_nothing(sandbox, adapter):
    control(sandbox, "faults", {"status_503": {"count": 1}})
    txid = new_txid()
    failed = adapter.create_charge(txid, 1000)
    assert failed.outcome == "transient" and failed.status_code == 503
    assert failed.description.startswith("ServicoIndisponivel")
    assert adapter.charge_status(txid).not_found
    assert adapter.create_charge(txid, 1000).ok


def test_read_timeout_on_create_is_unknown_and_the_charge_may_exist(sandbox, adapter):
    adapter.charge_status(new_txid())  # token first: only the charge call is slow
    control(sandbox, "faults", {"slow": {"delay": 1.5, "count": 1}})
    txid = new_txid()
    started = time.monotonic()
    lost = adapter.create_charge(txid, 1000)
    assert lost.outcome == "unknown" and lost.value is None
    assert time.monotonic() - started < 1.4
    status = adapter.charge_status(txid)  # what the caller must do before retrying
    assert status.ok and status.value.is_active and status.value.amount_cents == 1000


def test_read_timeout_on_status_is_transient(sandbox, adapter):
    txid = new_txid()
    assert adapter.create_charge(txid, 1000).ok
    control(sandbox, "faults", {"slow": {"delay": 1.5, "count": 1}})
    assert adapter.charge_status(txid).outcome == "transient"


def test_token_endpoint_failures(sandbox, adapter):
    control(sandbox, "faults", {"token_failure": {"count": 1, "status": 503}})
    failed = adapter.create_charge(new_txid(), 1000)
    assert failed.outcome == "transient" and failed.status_code == 503
    assert calls(sandbox, endpoint="cob.put") == []
    assert adapter.create_charge(new_txid(), 1000).ok


def test_wrong_client_credentials_are_rejected(sandbox, adapter):
    settings = adapter._settings
    wrong = ApiPixAdapter(
        PixSettings(
            base_url=settings.base_url,
            client_id=settings.client_id,
            client_secret="not-the-secret",
            pix_key=PIX_KEY,
            webhook_secret=settings.webhook_secret,
        )
    )
    result = wrong.create_charge(new_txid(), 1000)
    wrong.close()
    assert result.outcome == "rejected" and result.status_code == 401
    assert "not-the-secret" not in result.description
    assert calls(sandbox, endpoint="cob.put") == []


def test_nothing_listening_is_transient(adapter):
    settings = adapter._settings
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = ApiPixAdapter(
        PixSettings(
            base_url=f"http://127.0.0.1:{port}",
            client_id="c",
            client_secret="s",
            pix_key=PIX_KEY,
            webhook_secret=settings.webhook_secret,
        )
    )
    assert nowhere.create_charge(new_txid(), 1000).outcome == "transient"
    nowhere.close()


def test_expired_charge_status(sandbox, adapter):
    txid = new_txid()
    assert adapter.create_charge(txid, 1000).ok
    assert control(sandbox, "expire", {"txid": txid}).status_code == 200
    status = adapter.charge_status(txid)
    assert status.value.status == REMOVIDA_PELO_PSP and status.value.is_removed
    assert control(sandbox, "pay", {"txid": txid}).status_code == 409


def test_charge_expires_by_itself(sandbox, adapter):
    txid = new_txid()
    assert adapter.create_charge(txid, 1000, expires_in_seconds=1).ok
    wait_until(lambda: adapter.charge_status(txid).value.is_removed, 3, "expiry")


def test_invalid_arguments_are_programming_errors(adapter):
    with pytest.raises(ValueError):
        adapter.create_charge("short", 1000)
    with pytest.raises(ValueError):
        adapter.create_charge(new_txid(), 0)
    with pytest.raises(ValueError):
        adapter.charge_status("x/../y")


def test_callback_from_the_sandbox_parses_with_the_adapter(sandbox, adapter):
    receiver = Receiver()
    try:
        txid = new_txid()
        assert adapter.create_charge(txid, 1990).ok
        answer = control(sandbox, "pay", {"txid": txid, "notify_url": receiver.url}).json()
        (headers, body), *_ = wait_until(receiver.received, what="the callback")
        (notice,) = adapter.parse_notification(headers, body).notices
        assert notice.txid == txid and notice.amount_cents == 1990
        assert notice.event_key == answer["pix"][0]["endToEndId"]
    finally:
        receiver.close()
