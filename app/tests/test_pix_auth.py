"""How PSP callbacks are authenticated: mutual TLS (as the TLS terminator in front reports
the verified client certificate), our HMAC signature, or both (issue 12)."""

from __future__ import annotations

import pytest
from grimbots.models import PaymentEvent
from grimbots.settings import SettingsError, load_settings
from grimbots.web import create_wsgi_app
from payment_support import PIX_PATH, callback_body, pending_payment, signed
from support import count
from werkzeug.test import Client

HEADER = "X-Client-Cert-Subject"
PSP = "/C=BR/O=Example PSP/CN=callbacks.psp.example"


def client_for(env, **extra: str) -> Client:
    return Client(create_wsgi_app(load_settings(env | extra)))


@pytest.fixture
def mtls_env(env):
    """Mutual TLS only: no webhook secret, an allow-list of one subject."""
    env = {k: v for k, v in env.items() if k != "GRIMBOTS_PIX_WEBHOOK_SECRET"}
    return env | {
        "GRIMBOTS_PIX_CLIENT_CERT_HEADER": HEADER,
        "GRIMBOTS_PIX_CLIENT_CERT_SUBJECTS": f"{PSP}|/C=BR/O=Example PSP/CN=backup",
    }


def test_mutual_tls_alone_accepts_the_psp_and_nobody_else(mtls_env, bot, services):
    payment = pending_payment(services, bot, 1501)
    body = callback_body(payment.txid)
    client = client_for(mtls_env)
    plain = {"Content-Type": "application/json"}
    assert client.post(PIX_PATH, data=body, headers=plain).status_code == 401
    assert client.post(PIX_PATH, data=body, headers=plain | {HEADER: "/CN=evil"}).status_code == 401
    assert count(services, PaymentEvent) == 0
    assert client.post(PIX_PATH, data=body, headers=plain | {HEADER: PSP}).status_code == 200
    assert count(services, PaymentEvent) == 1


def test_the_caller_is_checked_before_its_body_is_read(mtls_env, bot):
    """A huge declared body from a caller without the PSP's certificate: 401, not read."""
    answer = client_for(mtls_env).post(
        PIX_PATH, data=b"{}", environ_overrides={"CONTENT_LENGTH": str(50 * 1024 * 1024)}
    )
    assert answer.status_code == 401


def test_both_factors_need_both(env, bot, services):
    payment = pending_payment(services, bot, 1502)
    body = callback_body(payment.txid)
    client = client_for(env, GRIMBOTS_PIX_CLIENT_CERT_HEADER=HEADER)
    assert client.post(PIX_PATH, data=body, headers=signed(body)).status_code == 401
    wrong = signed(body, "another-secret-0123456789") | {HEADER: PSP}
    assert client.post(PIX_PATH, data=body, headers=wrong).status_code == 401
    assert client.post(PIX_PATH, data=body, headers=signed(body) | {HEADER: PSP}).status_code == 200


def test_callbacks_must_be_authenticated_somehow(env):
    without_secret = {k: v for k, v in env.items() if k != "GRIMBOTS_PIX_WEBHOOK_SECRET"}
    with pytest.raises(
        SettingsError, match="PIX_WEBHOOK_SECRET or GRIMBOTS_PIX_CLIENT_CERT_HEADER"
    ):
        load_settings(without_secret)
    with pytest.raises(SettingsError, match="PIX_CLIENT_CERT_SUBJECTS needs"):
        load_settings(env | {"GRIMBOTS_PIX_CLIENT_CERT_SUBJECTS": PSP})
    with pytest.raises(SettingsError, match="header name"):
        load_settings(env | {"GRIMBOTS_PIX_CLIENT_CERT_HEADER": "X Bad: header"})


def test_a_callback_body_larger_than_200_notices_is_refused(env, bot):
    big = b'{"pix": [' + b'{"endToEndId": "E1"},' * 4000 + b"{}]}"
    assert client_for(env).post(PIX_PATH, data=big, headers=signed(big)).status_code == 413
