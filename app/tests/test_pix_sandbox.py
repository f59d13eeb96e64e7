"""The PSP stand-in itself: its API Pix subset, control endpoints and callbacks."""

from __future__ import annotations

import base64
import http.server
import ssl
import subprocess
import threading
import time
import uuid

import orjson
import pytest
from grimbots.lab.sandbox.pix import PixSandboxConfig, PixSandboxServer
from grimbots.lab.servers import wait_until
from grimbots.pix import NotificationMalformed, NotificationUnauthorized, txid_for
from pix_fixtures import HTTP, PIX_KEY, Receiver, start_sandbox


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def sandbox(receiver):
    server = start_sandbox(notify_url=receiver.url)
    yield server
    server.close()


def pay(sandbox, **spec) -> dict:
    response = HTTP.post(f"{sandbox.base_url}/_sandbox/pay", json=spec)
    assert response.status_code == 200, response.text
    return response.json()


def charge(adapter, amount_cents: int = 1000) -> str:
    txid = txid_for(uuid.uuid4())
    assert adapter.create_charge(txid, amount_cents).ok
    return txid


def notices(adapter, receiver) -> list:
    parsed = []
    for headers, body in receiver.received():
        parsed.extend(adapter.parse_notification(headers, body).notices)
    return parsed


def test_duplicate_callbacks_are_posted_n_times(sandbox, adapter, receiver):
    txid = charge(adapter)
    answer = pay(sandbox, txid=txid, times=4)
    assert answer["deliveries"] == 4
    wait_until(lambda: len(receiver.received()) == 4, what="4 callbacks")
    got = notices(adapter, receiver)
    assert {n.event_key for n in got} == {answer["pix"][0]["endToEndId"]}
    assert [n.txid for n in got] == [txid] * 4
    wait_until(lambda: len(notifications(sandbox)) == 4, what="4 delivery records")
    assert {n["status"] for n in notifications(sandbox)} == {200}


def notifications(sandbox) -> list[dict]:
    return HTTP.get(f"{sandbox.base_url}/_sandbox/notifications").json()["notifications"]


def test_late_callback(sandbox, adapter, receiver):
    txid = charge(adapter)
    started = time.monotonic()
    pay(sandbox, txid=txid, delay_seconds=0.3)
    assert receiver.received() == []
    wait_until(receiver.received, what="the late callback")
    assert time.monotonic() - started >= 0.3


def test_out_of_order_callbacks_for_several_charges(sandbox, adapter, receiver):
    txids = [charge(adapter, 100 + i) for i in range(6)]
    pay(sandbox, txids=txids, times=2, shuffle=True, seed=7)
    wait_until(lambda: len(receiver.received()) == 12, what="12 callbacks")
    order = [n.txid for n in notices(adapter, receiver)]
    assert sorted(order) == sorted(txids * 2)
    assert order != txids + txids  # shuffled, deterministically for a seed


def test_concurrent_callbacks(sandbox, adapter, receiver):
    txid = charge(adapter)
    answer = pay(sandbox, txid=txid, times=20, concurrent=True, wait=True)
    assert answer["results"] == [200] * 20
    assert len(receiver.received()) == 20


def test_batch_callback_carries_every_pix(sandbox, adapter, receiver):
    txids = [charge(adapter) for _ in range(3)]
    pay(sandbox, txids=txids, batch=True, wait=True)
    ((headers, body),) = receiver.received()
    assert [n.txid for n in adapter.parse_notification(headers, body).notices] == txids


def test_chosen_end_to_end_id_and_amount_mismatch(sandbox, adapter, receiver):
    txid = charge(adapter, 1000)
    pay(sandbox, txid=txid, end_to_end_id="E99999999202401011200custom00001", amount_cents=999)
    (notice,) = notices(adapter, wait_until(lambda: receiver.received() and receiver, what="cb"))
    assert (notice.event_key, notice.amount_cents) == ("E99999999202401011200custom00001", 999)
    status = adapter.charge_status(txid).value
    assert status.is_paid and status.paid_cents == 999 != status.amount_cents


def test_malformed_amount_reaches_the_webhook_as_is(sandbox, adapter, receiver):
    pay(sandbox, txid=charge(adapter), amount="12.345", wait=True)
    ((headers, body),) = receiver.received()
    with pytest.raises(NotificationMalformed):
        adapter.parse_notification(headers, body)


@pytest.mark.parametrize("mode", ["bad", "missing"])
def test_unsigned_or_badly_signed_callbacks(sandbox, adapter, receiver, mode):
    pay(sandbox, txid=charge(adapter), signature=mode, wait=True)
    ((headers, body),) = receiver.received()
    with pytest.raises(NotificationUnauthorized):
        adapter.parse_notification(headers, body)


def test_webhook_answers_are_recorded(sandbox, adapter, receiver):
    receiver.status = 500
    answer = pay(sandbox, txid=charge(adapter), times=2, wait=True)
    assert answer["results"] == [500, 500]
    dead = pay(sandbox, txid=charge(adapter), notify_url="http://127.0.0.1:9/none", wait=True)
    assert dead["results"] == [None]
    assert notifications(sandbox)[-1]["error"] == "ConnectError"


def test_paying_twice_or_unknown_charges_is_refused(sandbox, adapter):
    txid = charge(adapter)
    pay(sandbox, txid=txid)
    url = f"{sandbox.base_url}/_sandbox/pay"
    assert HTTP.post(url, json={"txid": txid}).status_code == 409
    assert HTTP.post(url, json={"txid": "nope" * 7}).status_code == 404
    assert HTTP.post(url, json={}).status_code == 400
    assert HTTP.post(url, json={"txid": txid, "times": "many"}).status_code == 400


def test_charges_listing_and_reset(sandbox, adapter):
    paid, open_ = charge(adapter), charge(adapter)
    pay(sandbox, txid=paid)
    url = f"{sandbox.base_url}/_sandbox/charges"
    listed = HTTP.get(url).json()["charges"]
    assert {c["txid"]: c["status"] for c in listed} == {paid: "CONCLUIDA", open_: "ATIVA"}
    assert [c["txid"] for c in HTTP.get(url, params={"status": "ATIVA"}).json()["charges"]] == [
        open_
    ]
    HTTP.delete(url)
    assert HTTP.get(url).json()["charges"] == []


def test_reset_forgets_calls_and_faults(sandbox, adapter):
    charge(adapter)
    HTTP.post(f"{sandbox.base_url}/_sandbox/faults", json={"status_503": {"count": None}})
    for _ in range(3):
        assert adapter.create_charge(txid_for(uuid.uuid4()), 100).outcome == "transient"
    HTTP.delete(f"{sandbox.base_url}/_sandbox/calls")
    assert HTTP.get(f"{sandbox.base_url}/_sandbox/calls").json()["calls"] == []
    assert adapter.create_charge(txid_for(uuid.uuid4()), 100).ok


def token(sandbox, credentials: str, grant: str = "client_credentials") -> tuple[int, dict]:
    response = HTTP.post(
        f"{sandbox.base_url}/oauth/token",
        data={"grant_type": grant},
        headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
    )
    return response.status_code, response.json()


def test_oauth_token_endpoint(sandbox):
    status, body = token(sandbox, "sandbox-client:sandbox-secret")
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert token(sandbox, "sandbox-client:wrong") == (401, {"error": "invalid_client"})
    assert token(sandbox, "garbage")[0] == 401
    assert token(sandbox, "sandbox-client:sandbox-secret", "password")[0] == 400


def test_cob_endpoints_need_a_bearer_token(sandbox):
    txid = txid_for(uuid.uuid4())
    assert HTTP.get(f"{sandbox.base_url}/cob/{txid}").status_code == 403
    response = HTTP.get(
        f"{sandbox.base_url}/cob/{txid}", headers={"Authorization": "Bearer forged"}
    )
    # The spec's answer to a caller it will not serve: 403 AcessoNegado (it lists no 401).
    assert response.status_code == 403
    assert response.json()["type"] == "https://pix.bcb.gov.br/api/v2/error/AcessoNegado"
    assert response.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "body",
    [
        {"valor": {"original": "12.345"}, "chave": PIX_KEY},
        {"valor": {"original": "0.00"}, "chave": PIX_KEY},
        {"valor": {"original": "12.34"}},
        {"valor": {"original": "12.34"}, "chave": "someone-else"},
        {"valor": {"original": "12.34"}, "chave": PIX_KEY, "calendario": {"expiracao": -5}},
        {"valor": {"original": "12.34"}, "chave": PIX_KEY, "calendario": []},
        {"valor": 12.34, "chave": PIX_KEY},
    ],
)
def test_put_cob_validates_its_body(sandbox, body):
    _, grant = token(sandbox, "sandbox-client:sandbox-secret")
    response = HTTP.put(
        f"{sandbox.base_url}/cob/{txid_for(uuid.uuid4())}",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {grant['access_token']}"},
    )
    assert response.status_code == 400
    assert response.json()["type"].endswith("/CobOperacaoInvalida")


def test_responsive_under_a_few_hundred_calls(sandbox, adapter):
    txid = charge(adapter)
    errors: list[str] = []

    def worker() -> None:
        for _ in range(50):
            result = adapter.charge_status(txid)
            if not result.ok:
                errors.append(result.outcome)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert errors == []
    assert elapsed < 4, f"400 calls took {elapsed:.1f}s"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def mutual_tls_receiver(tmp_path):
    """An HTTPS server on 127.0.0.1 that requires a client certificate signed by its CA, as
    HAProxy's PIX route does; it records the subject of each caller's certificate."""
    ca_key, ca = tmp_path / "ca.key", tmp_path / "ca.pem"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=Test CA",
    )  # fmt: skip
    pems = {}
    for name, extra in (("server", ["-addext", "subjectAltName=IP:127.0.0.1"]), ("psp", [])):
        key, csr, cert = (tmp_path / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/O=Test/CN={name}", *extra,
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "1", "-copy_extensions", "copy",
        )  # fmt: skip
        pems[name] = tmp_path / f"{name}.pem"
        pems[name].write_text(cert.read_text() + key.read_text())
    subjects: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            subjects.append(dict(pair[0] for pair in self.connection.getpeercert()["subject"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(pems["server"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", ca, pems["psp"], subjects
    server.shutdown()


def test_callbacks_present_the_psps_client_certificate(mutual_tls_receiver):
    url, ca, client_pem, subjects = mutual_tls_receiver
    config = PixSandboxConfig(notify_client_cert=str(client_pem), notify_ca_file=str(ca))
    server = PixSandboxServer(("127.0.0.1", 0), config)
    try:
        assert server.http.post(url + "/webhook/pix/apipix/pix", content=b"{}").status_code == 200
    finally:
        server.server_close()
    assert subjects == [{"organizationName": "Test", "commonName": "psp"}]
