"""The app and the PSP stand-in speak API Pix as its specification says (issue 13): the
requests the app sends, every answer and callback the stand-in produces, validated against
the spec's fields and formats (api_pix_spec); each documented error answer, and what the
app's adapter makes of it; the webhook registered the spec's way, callbacks at + /pix."""

from __future__ import annotations

import uuid

import api_pix_spec as spec
import httpx
import orjson
import pytest
from grimbots.lab.servers import wait_until
from grimbots.pix import txid_for
from pix_fixtures import HTTP, PIX_KEY, Receiver


def calls(sandbox, endpoint: str) -> list[dict]:
    return HTTP.get(f"{sandbox.base_url}/_sandbox/calls", params={"endpoint": endpoint}).json()[
        "calls"
    ]


def control(sandbox, path: str, body: dict) -> httpx.Response:
    return HTTP.post(f"{sandbox.base_url}/_sandbox/{path}", json=body)


def bearer(sandbox) -> dict[str, str]:
    config = sandbox.state.config
    token = HTTP.post(
        f"{sandbox.base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(config.client_id, config.client_secret),
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def new_txid() -> str:
    return txid_for(uuid.uuid4())


def test_charge_request_and_answers_follow_the_spec(sandbox, adapter):
    txid = new_txid()
    assert adapter.create_charge(txid, 1990, description="Gold course").ok
    (put,) = calls(sandbox, "cob.put")
    assert spec.cob_request(put["body"]) == []
    headers = bearer(sandbox)
    before = HTTP.get(f"{sandbox.base_url}/cob/{txid}", headers=headers)
    assert before.status_code == 200 and spec.cob_answer(before.json(), created=True) == []
    assert before.json()["status"] == "ATIVA" and "pix" not in before.json()
    control(sandbox, "pay", {"txid": txid})
    after = HTTP.get(f"{sandbox.base_url}/cob/{txid}", headers=headers).json()
    assert spec.cob_answer(after, created=True) == []
    assert after["status"] == "CONCLUIDA" and len(after["pix"]) == 1


def test_callbacks_follow_the_spec(sandbox, adapter):
    receiver = Receiver()
    try:
        txids = [new_txid() for _ in range(3)]
        for txid in txids:
            assert adapter.create_charge(txid, 500).ok
        spec_pay = {"txids": txids, "notify_url": receiver.url, "batch": True, "wait": True}
        assert control(sandbox, "pay", spec_pay).status_code == 200
        ((_, body),) = receiver.received()
        assert spec.callback(orjson.loads(body)) == []
        assert [p["txid"] for p in orjson.loads(body)["pix"]] == txids
    finally:
        receiver.close()


def test_access_denied_is_403_and_rejected(sandbox, adapter):
    txid = new_txid()
    answer = HTTP.get(f"{sandbox.base_url}/cob/{txid}", headers={"Authorization": "Bearer x"})
    assert answer.status_code == 403
    assert spec.problem(answer.json(), 403, "AcessoNegado") == []
    # Refused again with a fresh token: the adapter gives up, rejected (one retry only).
    control(sandbox, "faults", {"access_denied": {"count": 2}})
    result = adapter.charge_status(txid)
    assert result.outcome == "rejected" and result.status_code == 403
    assert result.description.startswith("AcessoNegado")
    assert [c["status"] for c in calls(sandbox, "cob.get")][-2:] == [403, 403]


def test_unknown_charge_is_404_not_found(sandbox, adapter):
    txid = new_txid()
    answer = HTTP.get(f"{sandbox.base_url}/cob/{txid}", headers=bearer(sandbox))
    assert answer.status_code == 404
    assert spec.problem(answer.json(), 404, "NaoEncontrado") == []
    result = adapter.charge_status(txid)
    assert result.not_found and result.outcome == "rejected"


@pytest.mark.parametrize(
    ("body", "property_"),
    [
        ({"valor": {"original": "12.3"}, "chave": PIX_KEY}, "cob.valor.original"),
        ({"valor": {"original": "0.00"}, "chave": PIX_KEY}, "cob.valor.original"),
        ({"valor": {"original": "1.00"}, "chave": "someone@else"}, "cob.chave"),
        (
            {"valor": {"original": "1.00"}, "chave": PIX_KEY, "calendario": {"expiracao": 0}},
            "cob.calendario.expiracao",
        ),
    ],
)
def test_invalid_charge_is_400_with_violacoes(body, property_, sandbox):
    answer = HTTP.put(f"{sandbox.base_url}/cob/{new_txid()}", json=body, headers=bearer(sandbox))
    assert answer.status_code == 400
    problem = answer.json()
    assert spec.problem(problem, 400, "CobOperacaoInvalida") == []
    assert [v["propriedade"] for v in problem["violacoes"]] == [property_]


def test_adapter_reports_the_violations_of_a_refused_charge(env, sandbox):
    """A PSP that refuses our key: rejected, and the spec's violacoes say why."""
    from grimbots.pix import ApiPixAdapter, PixSettings

    config = sandbox.state.config
    adapter = ApiPixAdapter(
        PixSettings(
            base_url=sandbox.base_url,
            client_id=config.client_id,
            client_secret=config.client_secret,
            pix_key="someone@else.example",
            webhook_secret="x" * 16,
        )
    )
    result = adapter.create_charge(new_txid(), 1000)
    assert result.outcome == "rejected" and result.status_code == 400
    assert "CobOperacaoInvalida" in result.description and "cob.chave" in result.description


def test_a_used_txid_is_400_and_the_adapter_finds_the_charge(sandbox, adapter):
    txid = new_txid()
    assert adapter.create_charge(txid, 700).ok
    again = HTTP.put(
        f"{sandbox.base_url}/cob/{txid}",
        json={"valor": {"original": "7.00"}, "chave": PIX_KEY},
        headers=bearer(sandbox),
    )
    assert again.status_code == 400
    assert spec.problem(again.json(), 400, "CobOperacaoInvalida") == []
    assert adapter.create_charge(txid, 700).ok  # found again through GET


def test_unavailable_is_503_and_transient(sandbox, adapter):
    control(sandbox, "faults", {"status_503": {"count": 1}})
    answer = HTTP.get(f"{sandbox.base_url}/cob/{new_txid()}", headers=bearer(sandbox))
    assert answer.status_code == 503
    assert spec.problem(answer.json(), 503, "ServicoIndisponivel") == []
    control(sandbox, "faults", {"status_503": {"count": 1}})
    assert adapter.charge_status(new_txid()).outcome == "transient"


def test_webhook_is_registered_the_spec_way_and_callbacks_come_to_it_plus_pix(sandbox, adapter):
    receiver = Receiver()
    try:
        base = receiver.url.removesuffix("/webhook/pix/apipix") + "/hook"
        assert adapter.register_webhook(base, dry_run=True).value is True
        assert adapter.register_webhook(base).value is True
        assert adapter.register_webhook(base).value is False  # in place: only a GET
        assert [c["endpoint"] for c in calls(sandbox, "webhook.put")] == ["webhook.put"]
        hook = HTTP.get(f"{sandbox.base_url}/webhook/{PIX_KEY}", headers=bearer(sandbox)).json()
        assert hook["webhookUrl"] == base and spec._rfc3339(hook["criacao"])
        txid = new_txid()
        assert adapter.create_charge(txid, 900).ok
        control(sandbox, "pay", {"txid": txid, "wait": True})
        wait_until(receiver.received, 5, "the callback")
        assert receiver.paths() == ["/hook/pix"]
        assert (
            HTTP.delete(
                f"{sandbox.base_url}/webhook/{PIX_KEY}", headers=bearer(sandbox)
            ).status_code
            == 204
        )
        gone = HTTP.get(f"{sandbox.base_url}/webhook/{PIX_KEY}", headers=bearer(sandbox))
        assert gone.status_code == 404 and spec.problem(gone.json(), 404, "NaoEncontrado") == []
    finally:
        receiver.close()


def test_the_app_takes_callbacks_at_the_spec_path(settings, bot, services):
    """Registered as /webhook/pix/apipix, callbacks arrive at /webhook/pix/apipix/pix."""
    from grimbots.models import PaymentEvent
    from grimbots.web import create_wsgi_app
    from payment_support import PIX_PATH, callback_body, pending_payment, signed
    from support import count
    from werkzeug.test import Client

    payment = pending_payment(services, bot, 1601)
    body = callback_body(payment.txid)
    client = Client(create_wsgi_app(settings))
    assert client.post(PIX_PATH + "/pix", data=body, headers=signed(body)).status_code == 200
    assert count(services, PaymentEvent) == 1
    assert client.post(PIX_PATH + "/other", data=body, headers=signed(body)).status_code == 404
