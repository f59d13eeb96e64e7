"""What the Central Bank's API Pix (OpenAPI 2.9.0) requires of the messages the app and the
PSP stand-in exchange: the fields and formats of its schemas, written out for the tests
(the schemas' names in comments). Each check returns the list of violations."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

TXID = re.compile(r"[a-zA-Z0-9]{26,35}")  # TxId (a charge's)
ANY_TXID = re.compile(r"[a-zA-Z0-9]{1,35}")  # Pix.txid
END_TO_END_ID = re.compile(r"[a-zA-Z0-9]{32}")  # EndToEndId
VALOR = re.compile(r"\d{1,10}\.\d{2}")  # valor.original, Pix.valor
ERROR_TYPE = "https://pix.bcb.gov.br/api/v2/error/"
COB_STATUSES = {"ATIVA", "CONCLUIDA", "REMOVIDA_PELO_USUARIO_RECEBEDOR", "REMOVIDA_PELO_PSP"}


def _rfc3339(value: Any) -> bool:
    """date-time in RFC 3339: a full date, a time and an offset (Z or +hh:mm)."""
    if not isinstance(value, str) or not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", value
    ):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _match(pattern: re.Pattern, value: Any) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def cob_request(body: Any) -> list[str]:
    """CobBody: what PUT /cob/{txid} may carry (the app's request)."""
    problems = []
    if not isinstance(body, dict):
        return ["body is not an object"]
    calendario = body.get("calendario", {})
    expiracao = calendario.get("expiracao") if isinstance(calendario, dict) else None
    if "calendario" in body and not (type(expiracao) is int and expiracao > 0):
        problems.append("calendario.expiracao must be a positive integer")
    valor = body.get("valor")
    if not isinstance(valor, dict) or not _match(VALOR, valor.get("original")):
        problems.append("valor.original must match \\d{1,10}\\.\\d{2}")
    chave = body.get("chave")
    if not isinstance(chave, str) or not 1 <= len(chave) <= 77:
        problems.append("chave must be 1-77 characters")
    request = body.get("solicitacaoPagador")
    if request is not None and (not isinstance(request, str) or len(request) > 140):
        problems.append("solicitacaoPagador must be at most 140 characters")
    allowed = {
        "calendario",
        "devedor",
        "loc",
        "valor",
        "chave",
        "solicitacaoPagador",
        "infoAdicionais",
    }
    problems += [f"unknown field {k}" for k in body if k not in allowed]
    return problems


def pix_entry(item: Any) -> list[str]:
    """Pix: one received PIX (in a charge's `pix` and in callbacks)."""
    if not isinstance(item, dict):
        return ["pix entry is not an object"]
    problems = []
    if not _match(END_TO_END_ID, item.get("endToEndId")):
        problems.append("endToEndId must be 32 characters of [a-zA-Z0-9]")
    if "txid" in item and not _match(ANY_TXID, item["txid"]):
        problems.append("txid must match [a-zA-Z0-9]{1,35}")
    if not _match(VALOR, item.get("valor")):
        problems.append("valor must match \\d{1,10}\\.\\d{2}")
    if not _rfc3339(item.get("horario")):
        problems.append("horario must be an RFC 3339 date-time")
    return problems


def cob_answer(body: Any, created: bool) -> list[str]:
    """CobGerada (PUT's 201) or CobCompleta (GET's 200)."""
    if not isinstance(body, dict):
        return ["body is not an object"]
    problems = []
    for field in ("txid", "calendario", "revisao", "status", "valor", "chave"):
        if field not in body:
            problems.append(f"{field} missing")
    if not _match(TXID, body.get("txid")):
        problems.append("txid must match [a-zA-Z0-9]{26,35}")
    calendario = body.get("calendario") or {}
    if not _rfc3339(calendario.get("criacao")):
        problems.append("calendario.criacao must be an RFC 3339 date-time")
    if not (type(calendario.get("expiracao")) is int and calendario["expiracao"] > 0):
        problems.append("calendario.expiracao must be a positive integer")
    if type(body.get("revisao")) is not int:
        problems.append("revisao must be an integer")
    if body.get("status") not in COB_STATUSES:
        problems.append(f"status {body.get('status')!r} is not one of {sorted(COB_STATUSES)}")
    if not _match(VALOR, (body.get("valor") or {}).get("original")):
        problems.append("valor.original must match \\d{1,10}\\.\\d{2}")
    if created or "loc" in body:
        loc = body.get("loc")
        if not isinstance(loc, dict) or type(loc.get("id")) is not int:
            problems.append("loc.id must be an integer")
        elif not isinstance(loc.get("location"), str) or loc.get("tipoCob") not in ("cob", "cobv"):
            problems.append("loc needs location and tipoCob cob|cobv")
        if not isinstance(body.get("location"), str):
            problems.append("location missing")
    if not isinstance(body.get("pixCopiaECola"), str):
        problems.append("pixCopiaECola missing")
    for item in body.get("pix", []):
        problems += pix_entry(item)
    return problems


def callback(body: Any) -> list[str]:
    """WebhookPixBody: what the PSP POSTs to {webhookUrl}/pix."""
    if not isinstance(body, dict) or not isinstance(body.get("pix"), list):
        return ['body must be {"pix": [...]}']
    return [problem for item in body["pix"] for problem in pix_entry(item)]


def problem(body: Any, status: int, kind: str) -> list[str]:
    """Problema (RFC 7807): type, title and status required; our `kind` expected."""
    if not isinstance(body, dict):
        return ["problem is not an object"]
    problems = []
    if body.get("type") != ERROR_TYPE + kind:
        problems.append(f"type {body.get('type')!r}, expected {ERROR_TYPE + kind}")
    if not isinstance(body.get("title"), str):
        problems.append("title missing")
    if body.get("status") != status:
        problems.append(f"status {body.get('status')!r}, expected {status}")
    for violation in body.get("violacoes", []):
        if not isinstance(violation, dict) or not {"razao", "propriedade"} <= set(violation):
            problems.append("each violacao needs razao and propriedade")
    return problems
