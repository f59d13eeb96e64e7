"""PixSettings.from_env: GRIMBOTS_PIX_* variables, one clear error per problem."""

from __future__ import annotations

import pytest
from grimbots.pix import PixSettings
from grimbots.settings import SettingsError

ENV = {
    "GRIMBOTS_PIX_BASE_URL": "https://pix.example.com/api/v2/",
    "GRIMBOTS_PIX_CLIENT_ID": "client",
    "GRIMBOTS_PIX_CLIENT_SECRET": "client-secret-value",
    "GRIMBOTS_PIX_KEY": "a3f1c2d4-5b6e-4f70-8a9b-0c1d2e3f4a5b",
    "GRIMBOTS_PIX_WEBHOOK_SECRET": "webhook-secret-0123456789",
}


def test_reads_the_environment_with_defaults():
    settings = PixSettings.from_env(ENV)
    assert settings.base_url == "https://pix.example.com/api/v2"
    assert settings.client_id == "client"
    assert settings.pix_key == ENV["GRIMBOTS_PIX_KEY"]
    assert settings.charge_expiry_seconds == 3600
    assert settings.read_timeout_seconds == 10.0
    assert settings.client_cert_file is None
    assert settings.token_url is None


def test_secrets_stay_out_of_repr():
    text = repr(PixSettings.from_env(ENV))
    assert "client-secret-value" not in text and "webhook-secret" not in text


def test_optional_values(tmp_path):
    cert = tmp_path / "client.pem"
    cert.write_text("not really a certificate")
    env = {
        **ENV,
        "GRIMBOTS_PIX_CHARGE_EXPIRY_SECONDS": "900",
        "GRIMBOTS_PIX_READ_TIMEOUT_SECONDS": "2.5",
        "GRIMBOTS_PIX_CLIENT_CERT_FILE": str(cert),
        "GRIMBOTS_PIX_TOKEN_URL": "https://auth.example.com/oauth/token",
    }
    settings = PixSettings.from_env(env)
    assert settings.charge_expiry_seconds == 900
    assert settings.read_timeout_seconds == 2.5
    assert settings.client_cert_file == str(cert)
    assert settings.token_url == "https://auth.example.com/oauth/token"


@pytest.mark.parametrize("name", sorted(ENV))
def test_missing_variable_is_named(name):
    env = {k: v for k, v in ENV.items() if k != name}
    with pytest.raises(SettingsError, match=name):
        PixSettings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRIMBOTS_PIX_BASE_URL", "ftp://pix.example.com"),
        ("GRIMBOTS_PIX_BASE_URL", "pix.example.com"),
        ("GRIMBOTS_PIX_WEBHOOK_SECRET", "short"),
        ("GRIMBOTS_PIX_CHARGE_EXPIRY_SECONDS", "an hour"),
        ("GRIMBOTS_PIX_CHARGE_EXPIRY_SECONDS", "0"),
        ("GRIMBOTS_PIX_READ_TIMEOUT_SECONDS", "-1"),
        ("GRIMBOTS_PIX_CLIENT_CERT_FILE", "/nonexistent/client.pem"),
        ("GRIMBOTS_PIX_CLIENT_KEY_FILE", "/nonexistent/client.key"),
        ("GRIMBOTS_PIX_TOKEN_URL", "/oauth/token"),
    ],
)
def test_malformed_variable_is_named(name, value):
    with pytest.raises(SettingsError, match=name) as error:
        PixSettings.from_env({**ENV, name: value})
    assert "\n" not in str(error.value)
    assert "short" not in str(error.value)  # a secret is never echoed
