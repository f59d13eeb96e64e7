"""PSP settings from the environment (GRIMBOTS_PIX_*), checked like the main Settings.

Errors are grimbots.env.SettingsError with one line naming the variable and never
its value when it is a secret; entry points turn them into exit code 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from grimbots.env import PREFIX, SettingsError, get, positive_float, positive_int, require

MIN_WEBHOOK_SECRET_LENGTH = 16
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
DEFAULT_CHARGE_EXPIRY_SECONDS = 3600
DEFAULT_READ_TIMEOUT_SECONDS = 10.0
DEFAULT_RECONCILE_AFTER_SECONDS = 300


@dataclass(frozen=True)
class PixSettings:
    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    pix_key: str
    # How callbacks are authenticated, one or both: the HMAC of our own X-Pix-Signature
    # header (a PSP that signs; the lab's stand-in), and mutual TLS as the TLS terminator
    # in front reports it: the header carrying the verified client certificate's subject,
    # and optionally the subjects allowed (the API Pix standard's way).
    webhook_secret: str | None = field(default=None, repr=False)
    client_cert_header: str | None = None
    client_cert_subjects: tuple[str, ...] = ()
    charge_expiry_seconds: int = DEFAULT_CHARGE_EXPIRY_SECONDS
    read_timeout_seconds: float = DEFAULT_READ_TIMEOUT_SECONDS
    # Most PSPs serve OAuth at {base_url}/oauth/token; some on another host or path.
    token_url: str | None = None
    # Real PSPs require mutual TLS on their API: a client certificate (PEM) and its key,
    # which may be in the same file.
    client_cert_file: str | None = None
    client_key_file: str | None = None
    # The reconciliation job asks the PSP about charges still pending after this long.
    reconcile_after_seconds: int = DEFAULT_RECONCILE_AFTER_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PixSettings:
        """Read GRIMBOTS_PIX_* from `env` (default os.environ); SettingsError on a problem."""
        env = os.environ if env is None else env
        base_url = require(env, "PIX_BASE_URL").rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(
                f"{PREFIX}PIX_BASE_URL must be an http(s) URL like https://pix.example.com/v2"
            )
        token_url = get(env, "PIX_TOKEN_URL")
        if token_url is not None and (
            urlsplit(token_url).scheme not in ("http", "https") or not urlsplit(token_url).hostname
        ):
            raise SettingsError(f"{PREFIX}PIX_TOKEN_URL must be an http(s) URL")
        webhook_secret = get(env, "PIX_WEBHOOK_SECRET")
        if webhook_secret is not None and len(webhook_secret) < MIN_WEBHOOK_SECRET_LENGTH:
            raise SettingsError(
                f"{PREFIX}PIX_WEBHOOK_SECRET must be at least "
                f"{MIN_WEBHOOK_SECRET_LENGTH} characters long"
            )
        cert_header = get(env, "PIX_CLIENT_CERT_HEADER")
        if cert_header is not None and not _HEADER_NAME.fullmatch(cert_header):
            raise SettingsError(f"{PREFIX}PIX_CLIENT_CERT_HEADER must be an HTTP header name")
        subjects = tuple(
            s.strip() for s in (get(env, "PIX_CLIENT_CERT_SUBJECTS") or "").split("|") if s.strip()
        )
        if subjects and cert_header is None:
            raise SettingsError(
                f"{PREFIX}PIX_CLIENT_CERT_SUBJECTS needs {PREFIX}PIX_CLIENT_CERT_HEADER"
            )
        if webhook_secret is None and cert_header is None:
            raise SettingsError(
                f"{PREFIX}PIX_WEBHOOK_SECRET or {PREFIX}PIX_CLIENT_CERT_HEADER is required: "
                "PSP callbacks must be authenticated (a signature, mutual TLS, or both)"
            )
        cert_file = _existing_file(env, "PIX_CLIENT_CERT_FILE")
        key_file = _existing_file(env, "PIX_CLIENT_KEY_FILE")
        if key_file and not cert_file:
            raise SettingsError(
                f"{PREFIX}PIX_CLIENT_KEY_FILE is set but {PREFIX}PIX_CLIENT_CERT_FILE is not"
            )
        return cls(
            base_url=base_url,
            client_id=require(env, "PIX_CLIENT_ID"),
            client_secret=require(env, "PIX_CLIENT_SECRET"),
            pix_key=require(env, "PIX_KEY"),
            webhook_secret=webhook_secret,
            client_cert_header=cert_header,
            client_cert_subjects=subjects,
            charge_expiry_seconds=positive_int(
                env, "PIX_CHARGE_EXPIRY_SECONDS", DEFAULT_CHARGE_EXPIRY_SECONDS
            ),
            read_timeout_seconds=positive_float(
                env, "PIX_READ_TIMEOUT_SECONDS", DEFAULT_READ_TIMEOUT_SECONDS
            ),
            token_url=token_url,
            client_cert_file=cert_file,
            client_key_file=key_file,
            reconcile_after_seconds=positive_int(
                env, "PIX_RECONCILE_AFTER_SECONDS", DEFAULT_RECONCILE_AFTER_SECONDS
            ),
        )


def _existing_file(env: Mapping[str, str], name: str) -> str | None:
    path = get(env, name)
    if path is not None and not os.path.isfile(path):
        raise SettingsError(f"{PREFIX}{name} must name a readable file, got {path!r}")
    return path
