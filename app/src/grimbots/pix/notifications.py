"""API Pix webhook callbacks: authenticate, then parse into PaymentNotice objects.

The callback body is {"pix": [{"endToEndId", "txid", "valor", "horario", "infoPagador"}]}.
The API Pix standard authenticates the PSP's calls with mutual TLS, which ends at the TLS
terminator in front (HAProxy): it verifies the PSP's client certificate and passes the
verified subject in a header (verify_client; GRIMBOTS_PIX_CLIENT_CERT_HEADER and an
optional allow-list of subjects). No real PSP sends our HMAC header: it is an optional
second factor for PSPs that sign, and the lab's stand-in does: the sender signs the raw
body with HMAC-SHA256 and sends `X-Pix-Signature: sha256=<hex digest>`. The signature is
checked before the body is parsed, with a constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from grimbots.pix.adapter import (
    Callback,
    NotificationMalformed,
    NotificationUnauthorized,
    PaymentNotice,
)
from grimbots.pix.money import InvalidAmount, cents_from_valor

SIGNATURE_HEADER = "X-Pix-Signature"
SIGNATURE_SCHEME = "sha256="
# The Central Bank's end-to-end id is 32 characters ("E" + ISPB + timestamp + sequence);
# we check only what makes it a safe key.
_END_TO_END_ID = re.compile(r"[A-Za-z0-9]{1,35}")
_TXID = re.compile(r"[A-Za-z0-9]{1,35}")


def sign(body: bytes, secret: str) -> str:
    """The X-Pix-Signature value for `body`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + digest


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()  # a plain dict is case-sensitive; HTTP header names are not
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def verify_signature(headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Raise NotificationUnauthorized("signature") unless the body carries our signature."""
    received = (_header(headers, SIGNATURE_HEADER) or "").strip()
    expected = sign(body, secret)
    if not received.lower().startswith(SIGNATURE_SCHEME):
        raise NotificationUnauthorized("signature")
    received = SIGNATURE_SCHEME + received[len(SIGNATURE_SCHEME) :].lower()
    if not hmac.compare_digest(received.encode("utf-8", "replace"), expected.encode()):
        raise NotificationUnauthorized("signature")


# A PIX happens now-ish: a time outside these years is a malformed field, and one near the
# ends of datetime's range (year 1, 9999) cannot even be moved to UTC.
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def parse_timestamp(value: object) -> datetime:
    """An API Pix RFC 3339 time as an aware UTC datetime; ValueError if it is not one.

    RFC 3339 requires an offset; a sender that leaves it out almost surely means UTC, and
    the time is informative only (amounts and ids decide), so it is taken as UTC.
    """
    if not isinstance(value, str):
        raise ValueError("not a string")
    moment = datetime.fromisoformat(value)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None
    if not EARLIEST <= moment < LATEST:
        raise ValueError("out of range")
    return moment


def _paid_at(value: object) -> datetime:
    try:
        return parse_timestamp(value)
    except ValueError:
        raise NotificationMalformed(
            "malformed: horario must be an RFC 3339 timestamp of this century"
        ) from None


def _notice(item: Any, index: int) -> PaymentNotice:
    where = f"pix[{index}]"
    if not isinstance(item, dict):
        raise NotificationMalformed(f"malformed: {where} must be an object")
    end_to_end_id = item.get("endToEndId")
    if not isinstance(end_to_end_id, str) or not _END_TO_END_ID.fullmatch(end_to_end_id):
        raise NotificationMalformed(f"malformed: {where}.endToEndId missing or invalid")
    txid = item.get("txid")
    if txid is not None and (not isinstance(txid, str) or not _TXID.fullmatch(txid)):
        raise NotificationMalformed(f"malformed: {where}.txid invalid")
    if "valor" not in item:
        raise NotificationMalformed(f"malformed: {where}.valor missing")
    try:
        amount_cents = cents_from_valor(item["valor"])
    except InvalidAmount as exc:
        raise NotificationMalformed(f"malformed: {where}.{exc}") from None
    if amount_cents <= 0:
        raise NotificationMalformed(f"malformed: {where}.valor must be greater than 0")
    if "horario" not in item:
        raise NotificationMalformed(f"malformed: {where}.horario missing")
    payer_info = item.get("infoPagador")
    return PaymentNotice(
        end_to_end_id=end_to_end_id,
        txid=txid or None,
        amount_cents=amount_cents,
        paid_at=_paid_at(item["horario"]),
        payer_info=payer_info if isinstance(payer_info, str) else None,
    )


def parse_body(body: bytes) -> Callback:
    """Parse an (already authenticated) API Pix callback body, entry by entry.

    An empty list is valid (some PSPs send one to test a newly registered webhook). A body
    that is not {"pix": [...]}, or whose every entry is malformed, is refused whole.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotificationMalformed("malformed: body is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("pix"), list):
        raise NotificationMalformed('malformed: body must be {"pix": [...]}')
    notices, rejected = [], []
    for index, item in enumerate(document["pix"]):
        try:
            notices.append(_notice(item, index))
        except NotificationMalformed as exc:
            rejected.append(exc.reason)
    if rejected and not notices:
        raise NotificationMalformed(rejected[0])
    return Callback(notices, rejected)


def verify_client(
    headers: Mapping[str, str], header: str | None, subjects: tuple[str, ...]
) -> None:
    """Mutual TLS, as the TLS terminator in front (HAProxy) reports it: it verifies the PSP's
    client certificate against the PSP's CA, drops any such header a client sent, and puts
    the verified subject in `header`. Without that header the caller is not the PSP."""
    if header is None:
        return
    subject = (_header(headers, header) or "").strip()
    if not subject or (subjects and subject not in subjects):
        raise NotificationUnauthorized("client certificate")


def parse_notification(headers: Mapping[str, str], body: bytes, secret: str | None) -> Callback:
    if secret is not None:
        verify_signature(headers, body, secret)
    return parse_body(body)
