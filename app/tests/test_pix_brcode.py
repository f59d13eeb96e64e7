"""The BR Code ("copia e cola") builder and checker."""

from __future__ import annotations

import pytest
from grimbots.pix.brcode import build_br_code, crc16_ccitt, has_valid_crc, parse_tlv


def test_crc16_ccitt_false_check_value():
    # The catalogued check value of CRC-16/CCITT-FALSE.
    assert crc16_ccitt(b"123456789") == 0x29B1


def test_central_bank_example_code_checks():
    # The example from the Central Bank's BR Code manual.
    code = (
        "00020126580014br.gov.bcb.pix0136123e4567-e12b-12d1-a456-426655440000"
        "5204000053039865802BR5913Fulano de Tal6008BRASILIA62070503***63041D3D"
    )
    assert has_valid_crc(code)
    assert not has_valid_crc(code[:-1] + "E")


def test_built_code_has_the_fields_and_a_valid_crc():
    txid = "gb0123456789abcdef0123456789abcdef"
    code = build_br_code(
        pix_key="key@example.com",
        amount="12.34",
        txid=txid,
        merchant_name="Loja São João",
        merchant_city="São Paulo",
    )
    assert has_valid_crc(code)
    fields = parse_tlv(code)
    assert fields["00"] == "01"
    assert parse_tlv(fields["26"]) == {"00": "br.gov.bcb.pix", "01": "key@example.com"}
    assert fields["53"] == "986"
    assert fields["54"] == "12.34"
    assert fields["58"] == "BR"
    assert fields["59"] == "LOJA SAO JOAO"
    assert fields["60"] == "SAO PAULO"
    assert parse_tlv(fields["62"]) == {"05": txid}
    assert list(fields)[-1] == "63" and len(fields["63"]) == 4


def test_tampered_code_fails_the_crc():
    code = build_br_code(
        pix_key="k", amount="12.34", txid="t" * 26, merchant_name="m", merchant_city="c"
    )
    assert not has_valid_crc(code.replace("12.34", "99.34"))


def test_parse_tlv_rejects_truncated_payload():
    with pytest.raises(ValueError):
        parse_tlv("000201260")
