"""Callback authentication (X-Pix-Signature) and parsing, without any server."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from grimbots.pix import (
    NotificationMalformed,
    NotificationRejected,
    NotificationUnauthorized,
    PixSettings,
)
from grimbots.pix.api_pix import ApiPixAdapter
from grimbots.pix.notifications import SIGNATURE_HEADER, sign

SECRET = "webhook-secret-0123456789"
ADAPTER = ApiPixAdapter(
    PixSettings(
        base_url="http://127.0.0.1:9",
        client_id="c",
        client_secret="s",
        pix_key="k",
        webhook_secret=SECRET,
    )
)
PIX = {
    "endToEndId": "E12345678202401021530abcdefghijk",
    "txid": "gb0123456789abcdef0123456789abcdef",
    "valor": "12.34",
    "horario": "2024-01-02T15:30:00.123Z",
    "infoPagador": "obrigado",
}


def signed(document: object, secret: str = SECRET) -> tuple[dict[str, str], bytes]:
    body = orjson.dumps(document)
    return {SIGNATURE_HEADER: sign(body, secret)}, body


def test_signed_notification_parses():
    headers, body = signed({"pix": [PIX, {**PIX, "endToEndId": "E2", "valor": "1.00"}]})
    first, second = ADAPTER.parse_notification(headers, body).notices
    assert first.end_to_end_id == first.event_key == PIX["endToEndId"]
    assert first.txid == PIX["txid"]
    assert first.amount_cents == 1234
    assert first.paid_at == datetime(2024, 1, 2, 15, 30, 0, 123000, tzinfo=UTC)
    assert first.payer_info == "obrigado"
    assert (second.event_key, second.amount_cents) == ("E2", 100)


def test_header_name_is_case_insensitive_and_hex_case_does_not_matter():
    headers, body = signed({"pix": [PIX]})
    value = headers[SIGNATURE_HEADER]
    lowered = {"x-pix-signature": "SHA256=" + value.split("=", 1)[1].upper()}
    assert len(ADAPTER.parse_notification(lowered, body).notices) == 1


def test_pix_without_txid_is_a_notice_without_txid():
    headers, body = signed({"pix": [{k: v for k, v in PIX.items() if k != "txid"}]})
    (notice,) = ADAPTER.parse_notification(headers, body).notices
    assert notice.txid is None


def test_empty_list_is_valid():
    assert ADAPTER.parse_notification(*signed({"pix": []})).notices == []


def test_timestamp_with_offset_and_without():
    headers, body = signed({"pix": [{**PIX, "horario": "2024-01-02T12:30:00-03:00"}]})
    assert ADAPTER.parse_notification(headers, body).notices[0].paid_at == datetime(
        2024, 1, 2, 15, 30, tzinfo=UTC
    )
    headers, body = signed({"pix": [{**PIX, "horario": "2024-01-02T15:30:00"}]})
    assert ADAPTER.parse_notification(headers, body).notices[0].paid_at.tzinfo is UTC


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {SIGNATURE_HEADER: ""},
        {SIGNATURE_HEADER: "sha256="},
        {SIGNATURE_HEADER: "sha256=deadbeef"},
        {SIGNATURE_HEADER: "md5=" + "0" * 64},
        {SIGNATURE_HEADER: "sha256=ção"},
        {SIGNATURE_HEADER: sign(orjson.dumps({"pix": [PIX]}), "another-secret-entirely")},
    ],
)
def test_missing_or_wrong_signature_is_unauthorized(headers):
    with pytest.raises(NotificationUnauthorized) as error:
        ADAPTER.parse_notification(headers, orjson.dumps({"pix": [PIX]}))
    assert error.value.reason == "signature"
    assert error.value.http_status == 401


def test_signature_covers_the_raw_body():
    headers, body = signed({"pix": [PIX]})
    tampered = body.replace(b"12.34", b"99.34")
    with pytest.raises(NotificationUnauthorized):
        ADAPTER.parse_notification(headers, tampered)


def test_malformed_body_is_checked_only_after_the_signature():
    with pytest.raises(NotificationUnauthorized):
        ADAPTER.parse_notification({}, b"not json")


def without(key: str) -> dict[str, str]:
    return {k: v for k, v in PIX.items() if k != key}


def test_one_bad_entry_does_not_hold_back_the_others():
    """A malformed entry (here a time of year 9999) is reported; the valid one is taken."""
    bad = {**PIX, "endToEndId": "E" + "2" * 31, "horario": "9999-12-31T23:59:59-03:00"}
    body = orjson.dumps({"pix": [bad, PIX]})
    callback = ADAPTER.parse_notification({SIGNATURE_HEADER: sign(body, SECRET)}, body)
    assert [n.end_to_end_id for n in callback.notices] == [PIX["endToEndId"]]
    assert len(callback.rejected) == 1 and "horario" in callback.rejected[0]


@pytest.mark.parametrize(
    "horario", ["0001-01-01T00:00:00+03:00", "9999-12-31T23:59:59-03:00", "1999-12-31T23:59:59Z"]
)
def test_a_time_out_of_range_is_malformed_not_an_error(horario):
    body = orjson.dumps({"pix": [{**PIX, "horario": horario}]})
    with pytest.raises(NotificationMalformed, match="horario"):
        ADAPTER.parse_notification({SIGNATURE_HEADER: sign(body, SECRET)}, body)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"", id="empty-body"),
        pytest.param([PIX], id="list-at-top"),
        pytest.param({"cob": []}, id="no-pix-key"),
        pytest.param({"pix": "E123"}, id="pix-not-list"),
        pytest.param({"pix": ["E123"]}, id="item-not-object"),
        pytest.param({"pix": [without("endToEndId")]}, id="no-endToEndId"),
        pytest.param({"pix": [{**PIX, "endToEndId": "E 1"}]}, id="bad-endToEndId"),
        pytest.param({"pix": [without("valor")]}, id="no-valor"),
        pytest.param({"pix": [without("horario")]}, id="no-horario"),
        pytest.param({"pix": [{**PIX, "horario": "yesterday"}]}, id="bad-horario"),
        pytest.param({"pix": [{**PIX, "txid": "../etc"}]}, id="bad-txid"),
        pytest.param({"pix": [{**PIX, "valor": "12.345"}]}, id="three-decimals"),
        pytest.param({"pix": [{**PIX, "valor": "-12.34"}]}, id="negative"),
        pytest.param({"pix": [{**PIX, "valor": "0.00"}]}, id="zero"),
        pytest.param({"pix": [{**PIX, "valor": 12.34}]}, id="number-not-string"),
        pytest.param({"pix": [{**PIX, "valor": "doze"}]}, id="words"),
        pytest.param(
            {"pix": [without("valor"), {**PIX, "horario": "0001-01-01T00:00:00Z"}]},
            id="every-item-bad",
        ),
    ],
)
def test_malformed_body_is_rejected(document):
    body = document if isinstance(document, bytes) else orjson.dumps(document)
    with pytest.raises(NotificationMalformed) as error:
        ADAPTER.parse_notification({SIGNATURE_HEADER: sign(body, SECRET)}, body)
    assert isinstance(error.value, NotificationRejected)
    assert error.value.http_status == 400
    assert error.value.reason.startswith("malformed")
