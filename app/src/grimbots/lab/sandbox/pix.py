"""A PSP stand-in speaking the Central Bank's API Pix: a small real HTTP server that records
every call and pays charges on request, calling the app's webhook like a PSP would.

API Pix (OpenAPI 2.9.0: the status codes and error types it lists for each endpoint):
          POST /oauth/token        HTTP Basic client_id:client_secret, form
                                   grant_type=client_credentials -> bearer token (OAuth2)
          PUT  /cob/{txid}         create an immediate charge: 201 with loc/location and a
                                   dynamic BR Code; 400 CobOperacaoInvalida with `violacoes`
                                   (a bad field, or a txid already used); 403 AcessoNegado
                                   (no valid bearer token); 503 ServicoIndisponivel
          GET  /cob/{txid}         200 the charge: ATIVA, CONCLUIDA (with "pix": [...]),
                                   REMOVIDA_PELO_PSP (expired or /_sandbox/expire); 404
                                   NaoEncontrado; 403; 503
          PUT  /webhook/{chave}    {"webhookUrl": U}: 200; callbacks then go to U + "/pix",
                                   as the spec says; GET: 200 or 404; DELETE: 204 or 404
Control:  GET    /_sandbox/calls[?endpoint=token|cob.put|cob.get&txid=]  oldest first
          DELETE /_sandbox/calls            forget calls, notifications and faults
          POST   /_sandbox/faults  JSON, any of:
                 {"status_503": {"count": N},              API calls answer 503, unchanged
                  "access_denied": {"count": N},           API calls answer 403 AcessoNegado
                  "slow": {"delay": S, "count": N},        API calls answer late (done first)
                  "token_failure": {"count": N, "status": 500},
                  "revoke_tokens": true,                   issued tokens stop working (401)
                  "lie": {TXID: {...} | null}}             GET /cob/TXID answers the charge
                                                           with these fields changed (even
                                                           with no such charge); null: truth
                 (as in the Telegram stand-in, a missing count is 1 for failures and every
                 call for slow; "count": null is every call)
          GET    /_sandbox/charges[?status=&txid=]   charges as GET /cob shows them
          DELETE /_sandbox/charges                   forget charges
          POST   /_sandbox/pay  JSON {"txid": T} or {"txids": [...]}, and optionally
                 "times": N (each notification N times), "delay_seconds": S (late),
                 "shuffle": true, "seed": K (out of order), "concurrent": true (all at once),
                 "batch": true (one callback carrying every pix), "amount": "12.34" or
                 "amount_cents": 1234 (a payment that differs from the charge),
                 "end_to_end_id": E (one txid only), "signature": "valid"|"bad"|"missing",
                 "notify_url": U (instead of the configured one), "wait": true (answer after
                 the deliveries, with their statuses), "allow_removed": true (pay a charge
                 that was removed: a PIX that raced the expiry, for late-payment tests)
                 -> marks the charges CONCLUIDA and POSTs signed callbacks in the background
          POST   /_sandbox/expire  JSON {"txid": T}  an ATIVA charge becomes REMOVIDA_PELO_PSP
          GET    /_sandbox/notifications             every callback delivery and its answer
                                                     (sent_at: when its POST started)
Callbacks: POST to the pay request's notify_url, else the registered webhook + "/pix", else
          the configured notify_url; body {"pix": [{"endToEndId", "txid", "valor", "horario",
          "infoPagador"}]}, header X-Pix-Signature: sha256=<HMAC-SHA256 of the body with
          webhook_secret> (see grimbots.pix.notifications).
A call is recorded when it has been handled, before any delay, with the status it gets: a
client that gives up waiting still finds its call recorded (and its charge created).
"""

from __future__ import annotations

import base64
import hmac
import itertools
import random
import re
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import orjson

from grimbots.lab.sandbox.http import JsonHandler, StandInServer
from grimbots.pix.brcode import build_dynamic_br_code
from grimbots.pix.notifications import SIGNATURE_HEADER, sign

_TXID = re.compile(r"[a-zA-Z0-9]{26,35}")
_VALOR = re.compile(r"[0-9]{1,10}\.[0-9]{2}")  # ASCII digits only, like the app
_ERROR_TYPE = "https://pix.bcb.gov.br/api/v2/error/"
DEFAULT_EXPIRY = 86400  # API Pix default for calendario.expiracao


@dataclass(frozen=True)
class PixSandboxConfig:
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    webhook_secret: str = "sandbox-webhook-secret"
    notify_url: str | None = None  # where /_sandbox/pay sends callbacks
    pix_key: str | None = None  # when set, PUT /cob must name this key
    token_ttl: int = 3600
    merchant_name: str = "GRIMBOTS SANDBOX"
    merchant_city: str = "SAO PAULO"
    ispb: str = "99999999"  # the PSP's 8-digit id, the start of every end-to-end id
    # Where a charge's payload would be served (the location of a dynamic BR Code).
    location_host: str = "pix.sandbox.invalid"
    notify_timeout: float = 10.0
    # Mutual TLS for the callbacks, as a real PSP does it: the PEM holding its client
    # certificate and key, and the CA that signed the receiver's certificate (https only).
    notify_client_cert: str | None = None
    notify_ca_file: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _problem(status: int, kind: str, title: str, detail: str) -> dict[str, Any]:
    """An RFC 7807 problem, as API Pix answers errors."""
    return {"type": _ERROR_TYPE + kind, "title": title, "status": status, "detail": detail}


def _invalid(kind: str, title: str, *violations: tuple[str, str]) -> dict[str, Any]:
    """A 400 problem with the spec's `violacoes`: (propriedade, razao) pairs."""
    problem = _problem(
        400, kind, title, "A requisição não respeita o schema ou está semanticamente errada."
    )
    problem["violacoes"] = [{"razao": razao, "propriedade": prop} for prop, razao in violations]
    return problem


def _count(spec: dict[str, Any], default: int | None) -> int | None:
    count = spec.get("count", default)
    return None if count is None else int(count)


class PixSandboxState:
    def __init__(self, config: PixSandboxConfig) -> None:
        self.config = config
        self.notify_url = config.notify_url
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.charges: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}  # chave -> {"webhookUrl", "criacao"}
        self.tokens: dict[str, float] = {}  # token -> time.time() it expires
        self.sequence = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.notifications.clear()
            self.fail_503: int | None = 0
            self.deny: int | None = 0
            self.slow_delay = 0.0
            self.slow_count: int | None = 0
            self.token_fail: int | None = 0
            self.token_fail_status = 500
            # txid -> fields GET /cob shows instead of the truth (a PSP that lies, for tests).
            self.lies: dict[str, dict[str, Any]] = {}

    def set_faults(self, spec: dict[str, Any]) -> None:
        with self.lock:
            if "status_503" in spec:
                self.fail_503 = _count(spec["status_503"], 1)
            if "access_denied" in spec:
                self.deny = _count(spec["access_denied"], 1)
            if "slow" in spec:
                self.slow_delay = float(spec["slow"].get("delay", 0))
                self.slow_count = _count(spec["slow"], None)
            if "token_failure" in spec:
                self.token_fail = _count(spec["token_failure"], 1)
                self.token_fail_status = int(spec["token_failure"].get("status", 500))
            if spec.get("revoke_tokens"):
                self.tokens.clear()
            for txid, fields in (spec.get("lie") or {}).items():
                if fields is None:
                    self.lies.pop(txid, None)
                else:
                    self.lies[txid] = dict(fields)

    @staticmethod
    def _take(count: int | None) -> tuple[bool, int | None]:
        """(fault applies now, remaining count); None means every call."""
        if count is None:
            return True, None
        if count > 0:
            return True, count - 1
        return False, 0

    def api_faults(self) -> tuple[bool, float]:
        """(answer 503, delay) for the next API call; consumes one-shot faults."""
        with self.lock:
            delay = 0.0
            if self.slow_delay:
                slow, self.slow_count = self._take(self.slow_count)
                delay = self.slow_delay if slow else 0.0
            fail, self.fail_503 = self._take(self.fail_503)
            return fail, delay

    def denied(self) -> bool:
        with self.lock:
            deny, self.deny = self._take(self.deny)
            return deny

    def token_fault(self) -> int | None:
        with self.lock:
            fail, self.token_fail = self._take(self.token_fail)
            return self.token_fail_status if fail else None

    def callback_url(self) -> str | None:
        """Where callbacks go without a URL of their own: the registered webhook plus
        "/pix" (API Pix: callbacks are POSTed to {webhookUrl}/pix), else the configured one."""
        with self.lock:
            hooks = [h for key, h in self.webhooks.items() if key == self.config.pix_key]
            hooks = hooks or list(self.webhooks.values())
        if hooks:
            return hooks[0]["webhookUrl"].rstrip("/") + "/pix"
        return self.notify_url

    def expire_if_due(self, charge: dict[str, Any]) -> None:
        """Caller holds the lock. An unpaid charge past its expiry is removed by the PSP."""
        if charge["status"] == "ATIVA" and time.time() > charge["expires"]:
            charge["status"] = "REMOVIDA_PELO_PSP"


def cob_view(charge: dict[str, Any]) -> dict[str, Any]:
    view = {
        "calendario": {"criacao": charge["criacao"], "expiracao": charge["expiracao"]},
        "txid": charge["txid"],
        "revisao": 0,
        "loc": {"id": charge["loc_id"], "location": charge["location"], "tipoCob": "cob"},
        "location": charge["location"],
        "status": charge["status"],
        "valor": {"original": charge["valor"]},
        "chave": charge["chave"],
        "pixCopiaECola": charge["pixCopiaECola"],
    }
    if charge.get("solicitacaoPagador"):
        view["solicitacaoPagador"] = charge["solicitacaoPagador"]
    if charge["pix"]:
        view["pix"] = list(charge["pix"])
    return view


class Handler(JsonHandler):
    server: PixSandboxServer

    @property
    def state(self) -> PixSandboxState:
        return self.server.state

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        # API Pix answers errors as RFC 7807 problem documents.
        problem = status >= 400 and isinstance(body, dict) and "type" in body
        super()._send(
            status,
            body,
            headers,
            "application/problem+json" if problem else "application/json",
        )

    def _json(self) -> Any:
        try:
            return orjson.loads(self._body() or b"{}")
        except orjson.JSONDecodeError:
            return None

    def _record(self, endpoint: str, txid: str | None, status: int, body: Any) -> None:
        call = {
            "endpoint": endpoint,
            "method": self.command,
            "path": urlsplit(self.path).path,
            "txid": txid,
            "status": status,
            "body": body,
            "time": time.time(),
        }
        with self.state.lock:
            self.state.calls.append(call)

    # --- routing -------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/_sandbox/calls":
            with self.state.lock:
                calls = list(self.state.calls)
            for key in ("endpoint", "txid"):
                if key in query:
                    calls = [c for c in calls if c[key] == query[key]]
            self._send(200, {"calls": calls})
        elif url.path == "/_sandbox/charges":
            with self.state.lock:
                for charge in self.state.charges.values():
                    self.state.expire_if_due(charge)
                charges = [cob_view(c) for c in self.state.charges.values()]
            for key in ("status", "txid"):
                if key in query:
                    charges = [c for c in charges if c[key] == query[key]]
            self._send(200, {"charges": charges})
        elif url.path == "/_sandbox/notifications":
            with self.state.lock:
                notifications = list(self.state.notifications)
            self._send(200, {"notifications": notifications})
        elif url.path.startswith("/cob/"):
            self._api("cob.get", url.path[len("/cob/") :], None)
        elif url.path.startswith("/webhook/"):
            self._api("webhook.get", unquote(url.path[len("/webhook/") :]), None)
        else:
            self._send(404, {"ok": False, "description": "Not Found"})

    def do_PUT(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/cob/"):
            self._api("cob.put", path[len("/cob/") :], self._json())
        elif path.startswith("/webhook/"):
            self._api("webhook.put", unquote(path[len("/webhook/") :]), self._json())
        else:
            self._send(404, {"ok": False, "description": "Not Found"})

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_sandbox/calls":
            self.state.reset()
            self._send(200, {"ok": True})
        elif path == "/_sandbox/charges":
            with self.state.lock:
                self.state.charges.clear()
            self._send(200, {"ok": True})
        elif path.startswith("/webhook/"):
            self._api("webhook.delete", unquote(path[len("/webhook/") :]), None)
        else:
            self._send(404, {"ok": False, "description": "Not Found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/oauth/token":
            self._token()
            return
        spec = self._json()
        if not isinstance(spec, dict):
            self._send(400, {"ok": False, "description": "body must be a JSON object"})
            return
        if path == "/_sandbox/faults":
            try:
                self.state.set_faults(spec)
            except (ValueError, TypeError, AttributeError) as exc:
                self._send(400, {"ok": False, "description": str(exc)})
                return
            self._send(200, {"ok": True})
        elif path == "/_sandbox/pay":
            try:
                status, answer = pay(self.server, spec)
            except (ValueError, TypeError) as exc:
                status, answer = 400, {"ok": False, "description": str(exc)}
            self._send(status, answer)
        elif path == "/_sandbox/expire":
            self._expire(spec)
        else:
            self._send(404, {"ok": False, "description": "Not Found"})

    # --- OAuth2 --------------------------------------------------------------------

    def _basic_credentials_ok(self) -> bool:
        scheme, _, encoded = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        config = self.state.config
        return hmac.compare_digest(client_id.encode(), config.client_id.encode()) and (
            hmac.compare_digest(secret.encode(), config.client_secret.encode())
        )

    def _token(self) -> None:
        form = {k: v[-1] for k, v in parse_qs(self._body().decode(errors="replace")).items()}
        failure = self.state.token_fault()
        if failure is not None:
            status, answer = failure, {"error": "server_error"}
        elif not self._basic_credentials_ok():
            status, answer = 401, {"error": "invalid_client"}
        elif form.get("grant_type") != "client_credentials":
            status, answer = 400, {"error": "unsupported_grant_type"}
        else:
            token = secrets.token_urlsafe(24)
            ttl = self.state.config.token_ttl
            with self.state.lock:
                self.state.tokens[token] = time.time() + ttl
            status = 200
            answer = {"access_token": token, "token_type": "Bearer", "expires_in": ttl}
            answer["scope"] = "cob.read cob.write pix.read"
        self._record("token", None, status, {"grant_type": form.get("grant_type")})
        headers = {"WWW-Authenticate": 'Basic realm="pix"'} if status == 401 else None
        self._send(status, answer, headers)

    def _bearer_ok(self) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        with self.state.lock:
            expires = self.state.tokens.get(token)
        return expires is not None and time.time() < expires

    # --- API Pix -------------------------------------------------------------------

    def _api(self, endpoint: str, key: str, body: Any) -> None:
        """One API Pix call; `key` is the txid (cob) or the chave (webhook)."""
        delay = 0.0
        if not self._bearer_ok() or self.state.denied():
            # The spec's answer to an authenticated caller it will not serve is 403
            # AcessoNegado; it lists no 401 for these endpoints.
            status = 403
            answer = _problem(403, "AcessoNegado", "Acesso Negado", "token missing or invalid")
        else:
            fail, delay = self.state.api_faults()
            if fail:
                status = 503
                answer = _problem(
                    503, "ServicoIndisponivel", "Serviço Indisponível", "sandbox fault"
                )
            elif endpoint == "cob.put":
                status, answer = self._put_cob(key, body)
            elif endpoint == "cob.get":
                status, answer = self._get_cob(key)
            else:
                status, answer = self._webhook(endpoint, key, body)
        self._record(endpoint, key if endpoint.startswith("cob") else None, status, body)
        if delay:
            time.sleep(delay)
        if status == 204:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(status, answer)

    def _webhook(self, endpoint: str, chave: str, body: Any) -> tuple[int, Any]:
        config = self.state.config
        if endpoint == "webhook.put":
            url = body.get("webhookUrl") if isinstance(body, dict) else None
            if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
                return 400, _invalid(
                    "WebhookOperacaoInvalida",
                    "Webhook inválido.",
                    ("webhookUrl", "O campo webhook.webhookUrl não respeita o schema."),
                )
            if not chave or len(chave) > 77 or (config.pix_key and chave != config.pix_key):
                return 400, _invalid(
                    "WebhookOperacaoInvalida",
                    "Webhook inválido.",
                    ("chave", "A chave não pertence a este usuário recebedor."),
                )
            with self.state.lock:
                self.state.webhooks[chave] = {"webhookUrl": url, "chave": chave, "criacao": _now()}
            return 200, {}
        with self.state.lock:
            hook = self.state.webhooks.get(chave)
            if hook is not None and endpoint == "webhook.delete":
                del self.state.webhooks[chave]
        if hook is None:
            return 404, _problem(404, "NaoEncontrado", "Não Encontrado", "Entidade não encontrada.")
        return (204, None) if endpoint == "webhook.delete" else (200, dict(hook))

    def _put_cob(self, txid: str, body: Any) -> tuple[int, dict[str, Any]]:
        config = self.state.config

        def invalid(field: str, reason: str) -> tuple[int, dict[str, Any]]:
            return 400, _invalid("CobOperacaoInvalida", "Cobrança inválida.", (field, reason))

        if not _TXID.fullmatch(txid):
            return invalid("txid", "O campo txid não respeita o schema.")
        if not isinstance(body, dict):
            return invalid("cob", "O corpo da requisição não respeita o schema.")
        valor = body.get("valor")
        original = valor.get("original") if isinstance(valor, dict) else None
        if not isinstance(original, str) or not _VALOR.fullmatch(original):
            return invalid(
                "cob.valor.original", "O campo cob.valor.original não respeita o schema."
            )
        if original.strip("0.") == "":
            return invalid("cob.valor.original", "O campo cob.valor.original é zero.")
        chave = body.get("chave")
        if not isinstance(chave, str) or not chave or len(chave) > 77:
            return invalid("cob.chave", "O campo cob.chave não respeita o schema.")
        if config.pix_key is not None and chave != config.pix_key:
            return invalid(
                "cob.chave",
                "O campo cob.chave corresponde a uma conta que não pertence a este usuário "
                "recebedor.",
            )
        calendario = body.get("calendario", {})
        if not isinstance(calendario, dict):
            return invalid("cob.calendario", "O campo cob.calendario não respeita o schema.")
        expiracao = calendario.get("expiracao", DEFAULT_EXPIRY)
        if isinstance(expiracao, bool) or not isinstance(expiracao, int) or expiracao <= 0:
            return invalid(
                "cob.calendario.expiracao",
                "O campo cob.calendario.expiracao é igual ou menor que zero.",
            )
        request = body.get("solicitacaoPagador")
        if request is not None and (not isinstance(request, str) or len(request) > 140):
            return invalid(
                "cob.solicitacaoPagador", "O campo solicitacaoPagador não respeita o schema."
            )
        with self.state.lock:
            if txid in self.state.charges:
                # PUT creates; a txid already used is a semantic error (PATCH revises).
                return invalid("txid", f"O txid {txid} já foi utilizado por outra cobrança.")
            now = time.time()
            location = f"{config.location_host}/qr/v2/{uuid.uuid4().hex}"
            charge = {
                "txid": txid,
                "status": "ATIVA",
                "valor": original,
                "chave": chave,
                "solicitacaoPagador": request,
                "expiracao": expiracao,
                "criacao": _now(),
                "expires": now + expiracao,
                "pix": [],
                "loc_id": next(self.state.sequence),
                "location": location,
                # A dynamic BR Code, as PSPs answer a `cob`: the payload's location, no txid.
                "pixCopiaECola": build_dynamic_br_code(
                    location=location,
                    amount=original,
                    merchant_name=config.merchant_name,
                    merchant_city=config.merchant_city,
                ),
            }
            self.state.charges[txid] = charge
            return 201, cob_view(charge)

    def _get_cob(self, txid: str) -> tuple[int, dict[str, Any]]:
        with self.state.lock:
            charge = self.state.charges.get(txid)
            lie = self.state.lies.get(txid)
            if lie is not None:
                if charge is not None:
                    self.state.expire_if_due(charge)
                return 200, {**(cob_view(charge) if charge else {"txid": txid}), **lie}
            if charge is None:
                return 404, _problem(404, "NaoEncontrado", "Não Encontrado", f"no charge {txid}")
            self.state.expire_if_due(charge)
            return 200, cob_view(charge)

    def _expire(self, spec: dict[str, Any]) -> None:
        with self.state.lock:
            charge = self.state.charges.get(str(spec.get("txid")))
            if charge is not None:
                self.state.expire_if_due(charge)
            if charge is None:
                status, answer = 404, {"ok": False, "description": "no such charge"}
            elif charge["status"] != "ATIVA":
                status = 409
                answer = {"ok": False, "description": f"charge is {charge['status']}"}
            else:
                charge["status"] = "REMOVIDA_PELO_PSP"
                status, answer = 200, {"ok": True, "charge": cob_view(charge)}
        self._send(status, answer)


# --- paying and notifying --------------------------------------------------------------


def _end_to_end_id(state: PixSandboxState) -> str:
    """E + the PSP's ISPB + yyyyMMddHHmm + 11 characters, like the Central Bank's ids.

    The caller holds the lock."""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M")
    return f"E{state.config.ispb}{stamp}{next(state.sequence):05d}{secrets.token_hex(3)}"


def _payment_valor(spec: dict[str, Any], charge_valor: str) -> str:
    if "amount_cents" in spec:
        reais, cents = divmod(int(spec["amount_cents"]), 100)
        return f"{reais}.{cents:02d}"
    if "amount" in spec:
        return str(spec["amount"])  # as given, so a test can also send a malformed valor
    return charge_valor


def pay(server: PixSandboxServer, spec: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Mark charges paid and start delivering their callbacks; (status, answer)."""
    state = server.state
    txids = spec.get("txids") or ([spec["txid"]] if "txid" in spec else [])
    if not txids or not all(isinstance(t, str) for t in txids):
        return 400, {"ok": False, "description": 'give "txid" or "txids"'}
    if "end_to_end_id" in spec and len(txids) != 1:
        return 400, {"ok": False, "description": "end_to_end_id needs exactly one txid"}
    times = int(spec.get("times", 1))
    if times < 1:
        return 400, {"ok": False, "description": "times must be at least 1"}
    with state.lock:
        for txid in txids:
            charge = state.charges.get(txid)
            if charge is None:
                return 404, {"ok": False, "description": f"no charge {txid}"}
            state.expire_if_due(charge)
            late = spec.get("allow_removed") and charge["status"].startswith("REMOVIDA")
            if charge["status"] != "ATIVA" and not late:
                return 409, {"ok": False, "description": f"charge {txid} is {charge['status']}"}
        items = []
        for txid in txids:
            charge = state.charges[txid]
            item = {
                "endToEndId": spec.get("end_to_end_id") or _end_to_end_id(state),
                "txid": txid,
                "valor": _payment_valor(spec, charge["valor"]),
                "horario": _now(),
                "infoPagador": spec.get("payer_info", "paid at the sandbox"),
            }
            charge["status"] = "CONCLUIDA"
            charge["pix"].append(item)
            items.append(item)
        request = next(state.sequence)
    callbacks = [items] if spec.get("batch") else [[item] for item in items]
    deliveries = [c for _ in range(times) for c in callbacks]
    if spec.get("shuffle"):
        random.Random(spec.get("seed")).shuffle(deliveries)
    url = spec.get("notify_url") or state.callback_url()
    answer: dict[str, Any] = {
        "ok": True,
        "request": request,
        "pix": items,
        "deliveries": len(deliveries) if url else 0,
    }
    if not url:
        return 200, answer
    worker = threading.Thread(
        target=server.deliver,
        args=(url, deliveries, float(spec.get("delay_seconds", 0)), spec, request),
        name="pix-sandbox-notify",
        daemon=True,
    )
    worker.start()
    if spec.get("wait"):
        worker.join()
        with state.lock:
            answer["results"] = [
                n["status"] for n in state.notifications if n["request"] == request
            ]
    return 200, answer


def callback_tls(config: PixSandboxConfig) -> ssl.SSLContext:
    """The callbacks' TLS: the receiver checked against notify_ca_file (or the system's
    CAs), our client certificate presented when there is one. A context, not httpx's
    cert=/verify= paths: with a CA file as verify=, httpx 0.28 leaves the client
    certificate out, and HAProxy's mutual TLS answered every lab callback 403."""
    context = ssl.create_default_context(cafile=config.notify_ca_file)
    if config.notify_client_cert:
        context.load_cert_chain(config.notify_client_cert)
    return context


class PixSandboxServer(StandInServer):
    def __init__(self, address: tuple[str, int], config: PixSandboxConfig | None = None):
        self.state = PixSandboxState(config or PixSandboxConfig())
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()
        super().__init__(address, Handler)

    @property
    def http(self) -> httpx.Client:
        """The client that delivers callbacks, made on first use."""
        with self._http_lock:
            if self._http is None:
                config = self.state.config
                self._http = httpx.Client(
                    timeout=config.notify_timeout, verify=callback_tls(config)
                )
            return self._http

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def deliver(
        self,
        url: str,
        deliveries: list[list[dict[str, Any]]],
        delay: float,
        spec: dict[str, Any],
        request: int,
    ) -> None:
        """POST each callback to `url`, one after another or all at once, after `delay`."""
        if delay:
            time.sleep(delay)
        if spec.get("concurrent"):
            threads = [
                threading.Thread(target=self._notify, args=(url, pix, spec, request))
                for pix in deliveries
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for pix in deliveries:
                self._notify(url, pix, spec, request)

    def _notify(
        self, url: str, pix: list[dict[str, Any]], spec: dict[str, Any], request: int
    ) -> None:
        body = orjson.dumps({"pix": pix})
        mode = spec.get("signature", "valid")
        headers = {"Content-Type": "application/json"}
        if mode == "valid":
            headers[SIGNATURE_HEADER] = sign(body, self.state.config.webhook_secret)
        elif mode == "bad":
            headers[SIGNATURE_HEADER] = sign(body, "not-the-webhook-secret")
        status: int | None = None
        error: str | None = None
        sent_at = time.time()
        try:
            status = self.http.post(url, content=body, headers=headers).status_code
        except Exception as exc:  # a stand-in reports every failure, it never dies of one
            error = type(exc).__name__
        record = {
            "url": url,
            "txids": [p["txid"] for p in pix],
            "end_to_end_ids": [p["endToEndId"] for p in pix],
            "signature": mode,
            "status": status,
            "error": error,
            "sent_at": sent_at,
            "time": time.time(),
            "request": request,
        }
        with self.state.lock:
            self.state.notifications.append(record)

    def server_close(self) -> None:
        super().server_close()
        with self._http_lock:
            if self._http is not None:
                self._http.close()

    def close(self) -> None:
        """Stop a server started with start_in_thread."""
        self.shutdown()
        self.server_close()


def make_server(
    host: str = "127.0.0.1", port: int = 0, config: PixSandboxConfig | None = None
) -> PixSandboxServer:
    """A bound, not yet serving stand-in; port 0 picks a free port (server.base_url)."""
    return PixSandboxServer((host, port), config)


def start_in_thread(
    host: str = "127.0.0.1", port: int = 0, config: PixSandboxConfig | None = None
) -> PixSandboxServer:
    """For tests: a running server on a free port; stop it with server.close()."""
    server = make_server(host, port, config)
    # A short poll interval makes close() (shutdown) take milliseconds, not half a second.
    server.serve_in_thread("pix-sandbox", poll_interval=0.02)
    return server


def serve_forever(host: str, port: int, config: PixSandboxConfig | None = None) -> None:
    server = make_server(host, port, config)
    target = server.state.notify_url or "nowhere (set notify_url)"
    server.serve_until_interrupted(
        f"pix sandbox listening on http://{host}:{server.server_address[1]}, callbacks to {target}"
    )
