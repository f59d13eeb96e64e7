"""The PIX "copia e cola" string: an EMV QR Code payload in the Central Bank's BR Code form.

Each field is ID (2 digits) + length (2 digits) + value; the last field (63) is a
CRC16-CCITT-FALSE over everything before it, including "6304". The app treats the code it
gets from the PSP as opaque text to send to the buyer; the builder is for the PSP stand-in,
and the parser/checker for tests and sanity checks.
"""

from __future__ import annotations

import unicodedata

PIX_GUI = "br.gov.bcb.pix"


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no xor-out."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _field(field_id: str, value: str) -> str:
    if len(value) > 99:
        raise ValueError(f"BR Code field {field_id} is longer than 99 characters")
    return f"{field_id}{len(value):02d}{value}"


def _plain(text: str, limit: int) -> str:
    # Bank apps expect plain ASCII in the merchant name and city.
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return ascii_text.upper()[:limit]


def build_br_code(
    *, pix_key: str, amount: str, txid: str, merchant_name: str, merchant_city: str
) -> str:
    """A single-use BR Code for `amount` (API form, "12.34") to `pix_key`, tagged with txid.

    A static code (the PSP stand-in answers a `cob` with the dynamic form below, as real PSPs
    do); this one carries the key and txid itself.
    """
    body = (
        _field("00", "01")  # payload format indicator
        + _field("01", "12")  # point of initiation: 12 = single use
        + _field("26", _field("00", PIX_GUI) + _field("01", pix_key))
        + _field("52", "0000")  # merchant category code: not informed
        + _field("53", "986")  # currency: BRL
        + _field("54", amount)
        + _field("58", "BR")
        + _field("59", _plain(merchant_name, 25))
        + _field("60", _plain(merchant_city, 15))
        + _field("62", _field("05", txid))
        + "6304"
    )
    return body + f"{crc16_ccitt(body.encode()):04X}"


def build_dynamic_br_code(
    *, location: str, amount: str, merchant_name: str, merchant_city: str
) -> str:
    """The dynamic BR Code PSPs answer a `cob` with: field 26-25 holds the location of the
    charge's payload (host/path, no scheme), and field 62-05 holds "***", not the txid."""
    body = (
        _field("00", "01")
        + _field("01", "12")
        + _field("26", _field("00", PIX_GUI) + _field("25", location))
        + _field("52", "0000")
        + _field("53", "986")
        + _field("54", amount)
        + _field("58", "BR")
        + _field("59", _plain(merchant_name, 25))
        + _field("60", _plain(merchant_city, 15))
        + _field("62", _field("05", "***"))
        + "6304"
    )
    return body + f"{crc16_ccitt(body.encode()):04X}"


def parse_tlv(payload: str) -> dict[str, str]:
    """Top-level fields of an EMV payload: {"00": "01", "26": "0014br.gov...", ...}."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(payload):
        field_id, length = payload[position : position + 2], payload[position + 2 : position + 4]
        if len(field_id) != 2 or len(length) != 2 or not length.isdigit():
            raise ValueError(f"malformed EMV field at position {position}")
        value = payload[position + 4 : position + 4 + int(length)]
        if len(value) != int(length):
            raise ValueError(f"EMV field {field_id} is shorter than its length")
        fields[field_id] = value
        position += 4 + int(length)
    return fields


def has_valid_crc(payload: str) -> bool:
    """True when the payload ends with field 63 holding the right CRC of what precedes it."""
    if len(payload) < 8 or payload[-8:-4] != "6304":
        return False
    expected = f"{crc16_ccitt(payload[:-4].encode()):04X}"
    return payload[-4:].upper() == expected
