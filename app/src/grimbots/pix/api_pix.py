"""The Central Bank's standard "API Pix" (v2): immediate charges (`cob`) and callbacks.

OAuth2 client credentials give a bearer token, cached until shortly before it expires and
fetched again once if the PSP answers 401. One httpx client per process (re-made after a
fork), with connect and read timeouts. PUT /cob/{txid} is the only call that changes
anything at the PSP, and the only one whose lost answer is "unknown"; a token request or a
GET that times out changed nothing and is "transient".
"""

from __future__ import annotations

import functools
import ssl
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from grimbots.per_process import PerProcessClient
from grimbots.pix.adapter import (
    Callback,
    Charge,
    ChargeStatus,
    PixPayment,
    PixResult,
)
from grimbots.pix.money import InvalidAmount, cents_from_valor, valor_from_cents
from grimbots.pix.notifications import parse_notification, parse_timestamp, verify_client
from grimbots.pix.settings import PixSettings
from grimbots.pix.txid import is_valid_txid

CONNECT_TIMEOUT = 3.0
KEEPALIVE_EXPIRY = 4.0  # drop idle sockets before the PSP does (see grimbots.telegram)
# Refresh the token this long before the PSP says it expires (or a tenth of its life, for
# very short-lived tokens), so a request never leaves with a token about to die in flight.
TOKEN_REFRESH_MARGIN = 30.0
MAX_DESCRIPTION = 140  # solicitacaoPagador limit in API Pix


@functools.cache
def _tls_context(cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """One TLS context per process and certificate: loading the CA bundle takes a while."""
    context = ssl.create_default_context()
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class _Unreadable(ValueError):
    """A 2xx answer whose body is not the shape API Pix documents."""


def _timestamp(value: object) -> datetime:
    try:
        return parse_timestamp(value)
    except ValueError:
        raise _Unreadable(f"not an RFC 3339 timestamp of this century: {value!r:.40}") from None


def _amount(body: dict[str, Any]) -> int:
    valor = body.get("valor")
    original = valor.get("original") if isinstance(valor, dict) else None
    try:
        return cents_from_valor(original)
    except InvalidAmount as exc:
        raise _Unreadable(str(exc)) from None


def _charge(body: Any) -> Charge:
    if not isinstance(body, dict):
        raise _Unreadable("body is not an object")
    calendario = body.get("calendario")
    if not isinstance(calendario, dict):
        raise _Unreadable("calendario missing")
    created_at = _timestamp(calendario.get("criacao"))
    expiracao = calendario.get("expiracao", 86400)  # API Pix default: one day
    code = body.get("pixCopiaECola")
    if not isinstance(code, str) or not code:
        raise _Unreadable("pixCopiaECola missing")
    if not isinstance(body.get("txid"), str) or not isinstance(body.get("status"), str):
        raise _Unreadable("txid or status missing")
    if not isinstance(expiracao, int):
        raise _Unreadable("calendario.expiracao is not a number")
    return Charge(
        txid=body["txid"],
        status=body["status"],
        amount_cents=_amount(body),
        pix_copy_paste=code,
        created_at=created_at,
        expires_at=created_at + timedelta(seconds=expiracao),
    )


def _status(body: Any) -> ChargeStatus:
    if not isinstance(body, dict):
        raise _Unreadable("body is not an object")
    if not isinstance(body.get("txid"), str) or not isinstance(body.get("status"), str):
        raise _Unreadable("txid or status missing")
    items = body.get("pix") or []
    if not isinstance(items, list):
        raise _Unreadable("pix is not a list")
    payments = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("endToEndId"), str):
            raise _Unreadable("pix item without endToEndId")
        try:
            amount_cents = cents_from_valor(item.get("valor"))
        except InvalidAmount as exc:
            raise _Unreadable(str(exc)) from None
        payments.append(
            PixPayment(
                end_to_end_id=item["endToEndId"],
                amount_cents=amount_cents,
                paid_at=_timestamp(item.get("horario")),
            )
        )
    return ChargeStatus(
        txid=body["txid"],
        status=body["status"],
        amount_cents=_amount(body),
        payments=tuple(payments),
    )


def _problem(response: httpx.Response) -> str:
    """A short description from an RFC 7807 problem (what API Pix answers: its error type,
    detail and `violacoes`) or an OAuth error."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    text = body.get("detail") or body.get("title") or body.get("error_description")
    text = str(text or body.get("error") or f"HTTP {response.status_code}")
    kind = body.get("type")
    if isinstance(kind, str) and "/" in kind:
        text = f"{kind.rsplit('/', 1)[1]}: {text}"
    violations = body.get("violacoes")
    if isinstance(violations, list):
        text += "".join(
            f"; {v.get('propriedade')}: {v.get('razao')}" for v in violations if isinstance(v, dict)
        )
    return text[:500]


class ApiPixAdapter:
    provider = "apipix"

    def __init__(self, settings: PixSettings):
        self._settings = settings
        self._http = PerProcessClient(self._make_client)
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_expires = 0.0  # time.monotonic() after which we fetch a new one

    def _make_client(self) -> httpx.Client:
        settings = self._settings
        return httpx.Client(
            base_url=settings.base_url,
            timeout=httpx.Timeout(settings.read_timeout_seconds, connect=CONNECT_TIMEOUT),
            verify=_tls_context(settings.client_cert_file, settings.client_key_file),
            limits=httpx.Limits(max_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY),
        )

    @property
    def client(self) -> httpx.Client:
        return self._http.get()

    def close(self) -> None:
        self._http.close()
        self._token = None

    # --- OAuth2 client credentials -------------------------------------------------

    def _fetch_token(self) -> PixResult[str]:
        try:
            response = self.client.post(
                self._settings.token_url or "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(self._settings.client_id, self._settings.client_secret),
            )
        except httpx.TransportError as exc:
            # Asking for a token changes nothing at the PSP: any failure is retryable.
            return PixResult("transient", description=f"token: {type(exc).__name__}")
        if response.status_code != 200:
            failure = self._failure(response)
            return PixResult(
                failure.outcome, None, failure.status_code, "token: " + failure.description
            )
        try:
            body = response.json()
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            return PixResult("transient", status_code=200, description="token: unreadable answer")
        if not isinstance(token, str) or not token:
            return PixResult("transient", status_code=200, description="token: empty token")
        margin = min(TOKEN_REFRESH_MARGIN, expires_in / 10)
        self._token = token
        self._token_expires = time.monotonic() + expires_in - margin
        return PixResult("ok", token, 200)

    def _bearer(self, stale: str | None = None) -> PixResult[str]:
        """A valid token; `stale` is one the PSP just refused, to be replaced."""
        with self._token_lock:
            token = self._token
            if token is not None and token != stale and time.monotonic() < self._token_expires:
                return PixResult("ok", token)
            return self._fetch_token()

    # --- API calls -----------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, *, changes_state: bool
    ) -> PixResult[httpx.Response]:
        stale: str | None = None
        for attempt in range(2):
            bearer = self._bearer(stale)
            if not bearer.ok:
                return PixResult(bearer.outcome, None, bearer.status_code, bearer.description)
            headers = {"Authorization": f"Bearer {bearer.value}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                response = self.client.request(
                    method,
                    path,
                    content=None if body is None else orjson.dumps(body),
                    headers=headers,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                return PixResult("transient", description=f"not sent: {type(exc).__name__}")
            except httpx.TransportError as exc:
                # ReadTimeout, ReadError, RemoteProtocolError, WriteError...: the request
                # may have reached the PSP.
                outcome = "unknown" if changes_state else "transient"
                return PixResult(outcome, description=f"no answer: {type(exc).__name__}")
            # 401 (OAuth) or the spec's 403 AcessoNegado: a cached token may have expired or
            # been revoked before we thought. Fetch one more, once; refused again, the
            # caller gets the answer (we are really not allowed).
            if response.status_code in (401, 403) and attempt == 0:
                stale = bearer.value
                continue
            return PixResult("ok", response, response.status_code)
        raise AssertionError("unreachable: the second attempt always returns")

    @staticmethod
    def _failure(response: httpx.Response) -> PixResult[Any]:
        status = response.status_code
        outcome = "transient" if status >= 500 or status == 429 else "rejected"
        return PixResult(outcome, None, status, _problem(response))

    def create_charge(
        self,
        txid: str,
        amount_cents: int,
        expires_in_seconds: int | None = None,
        description: str | None = None,
    ) -> PixResult[Charge]:
        """PUT /cob/{txid}. Repeating it for the same txid and amount finds the same charge.

        An ok result may hold a charge that is no longer ATIVA (found again after it was
        paid or removed): check `charge.status`.
        """
        if not is_valid_txid(txid):
            raise ValueError(f"txid must be 26-35 characters of [a-zA-Z0-9], got {txid!r}")
        if amount_cents <= 0:
            raise ValueError(f"amount must be greater than 0 cents, got {amount_cents}")
        expiry = expires_in_seconds or self._settings.charge_expiry_seconds
        body: dict[str, Any] = {
            "calendario": {"expiracao": expiry},
            "valor": {"original": valor_from_cents(amount_cents)},
            "chave": self._settings.pix_key,
        }
        if description:
            body["solicitacaoPagador"] = description[:MAX_DESCRIPTION]
        sent = self._request("PUT", f"/cob/{txid}", body, changes_state=True)
        if not sent.ok or sent.value is None:
            return PixResult(sent.outcome, None, sent.status_code, sent.description)
        response = sent.value
        if response.status_code in (200, 201):
            try:
                return PixResult("ok", _charge(response.json()), response.status_code)
            except (_Unreadable, ValueError) as exc:
                # Created (2xx), but we cannot read it: ask for its status before retrying.
                return PixResult("unknown", None, response.status_code, f"unreadable: {exc}")
        if response.status_code in (400, 409, 422):
            # Some PSPs refuse a second PUT for an existing txid instead of answering with
            # the charge: the charge we want may already be there.
            existing = self._existing_charge(txid, amount_cents)
            if existing is not None:
                return existing
        return self._failure(response)

    def _existing_charge(self, txid: str, amount_cents: int) -> PixResult[Charge] | None:
        sent = self._request("GET", f"/cob/{txid}", None, changes_state=False)
        if not sent.ok or sent.value is None or sent.value.status_code != 200:
            return None
        try:
            charge = _charge(sent.value.json())
        except (_Unreadable, ValueError):
            return None
        if charge.amount_cents != amount_cents:
            return PixResult(
                "rejected",
                None,
                409,
                f"txid {txid} already holds a charge of {charge.amount_cents} cents",
            )
        return PixResult("ok", charge, 200)

    def charge_status(self, txid: str) -> PixResult[ChargeStatus]:
        """GET /cob/{txid}: ATIVA, CONCLUIDA (with the payments) or REMOVIDA_*."""
        if not is_valid_txid(txid):
            raise ValueError(f"txid must be 26-35 characters of [a-zA-Z0-9], got {txid!r}")
        sent = self._request("GET", f"/cob/{txid}", None, changes_state=False)
        if not sent.ok or sent.value is None:
            return PixResult(sent.outcome, None, sent.status_code, sent.description)
        response = sent.value
        if response.status_code != 200:
            return self._failure(response)
        try:
            return PixResult("ok", _status(response.json()), 200)
        except (_Unreadable, ValueError) as exc:
            return PixResult("transient", None, 200, f"unreadable: {exc}")

    def register_webhook(self, webhook_url: str, dry_run: bool = False) -> PixResult[bool]:
        """PUT /webhook/{chave} with our URL unless GET shows it registered already.

        The PSP then POSTs callbacks to webhook_url + "/pix" (API Pix). ok with value True
        when it changed (or, with dry_run, would change), False when it was in place.
        """
        path = f"/webhook/{quote(self._settings.pix_key, safe='')}"
        sent = self._request("GET", path, None, changes_state=False)
        if not sent.ok or sent.value is None:
            return PixResult(sent.outcome, None, sent.status_code, sent.description)
        current = sent.value
        if current.status_code == 200:
            try:
                registered = current.json().get("webhookUrl")
            except (ValueError, AttributeError):
                registered = None
            if registered == webhook_url:
                return PixResult("ok", False, 200)
        elif current.status_code != 404:
            return self._failure(current)
        if dry_run:
            return PixResult("ok", True, current.status_code)
        sent = self._request("PUT", path, {"webhookUrl": webhook_url}, changes_state=True)
        if not sent.ok or sent.value is None:
            return PixResult(sent.outcome, None, sent.status_code, sent.description)
        if sent.value.status_code in (200, 201, 204):
            return PixResult("ok", True, sent.value.status_code)
        return self._failure(sent.value)

    def verify_client(self, headers: Mapping[str, str]) -> None:
        """The PSP's client certificate, as the TLS terminator verified it (if configured)."""
        verify_client(
            headers, self._settings.client_cert_header, self._settings.client_cert_subjects
        )

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Callback:
        """Check X-Pix-Signature against our webhook secret (if set), then parse."""
        return parse_notification(headers, body, self._settings.webhook_secret)
