"""Amounts (cents <-> API Pix valor) and txids derived from payment ids."""

from __future__ import annotations

import uuid

import pytest
from grimbots.pix import (
    InvalidAmount,
    cents_from_valor,
    is_valid_txid,
    payment_id_from_txid,
    txid_for,
    valor_from_cents,
)


@pytest.mark.parametrize(
    ("valor", "cents"),
    [("12.34", 1234), ("0.01", 1), ("0.10", 10), ("0.29", 29), ("1.15", 115),
     ("9999999999.99", 999999999999)],
)  # fmt: skip
def test_valor_converts_exactly(valor, cents):
    assert cents_from_valor(valor) == cents


@pytest.mark.parametrize(
    "valor",
    ["12.345", "-1.00", "1e3", "NaN", "Infinity", "", " 1.00", "1,00", "1.", ".5", "+1.00",
     "12345678901.00", 12.34, 1234, None, True,
     # API Pix writes exactly two decimals: a lenient sender's "12.3" or "7" is refused.
     "12.3", "7",
     # Only ASCII digits are money: Arabic-Indic, fullwidth and other Unicode digits are not.
     "\u0661.\u0660\u0660", "\uff11.\uff10\uff10", "1.\u0660\u0660", "\u0967.00"],
)  # fmt: skip
def test_bad_valor_is_rejected(valor):
    with pytest.raises(InvalidAmount):
        cents_from_valor(valor)


@pytest.mark.parametrize(("cents", "valor"), [(1234, "12.34"), (1, "0.01"), (100, "1.00")])
def test_cents_to_valor(cents, valor):
    assert valor_from_cents(cents) == valor
    assert cents_from_valor(valor_from_cents(cents)) == cents


@pytest.mark.parametrize("cents", [-1, 1.5, "12", True, 10**12])
def test_bad_cents_are_rejected(cents):
    with pytest.raises(InvalidAmount):
        valor_from_cents(cents)


def test_txid_is_deterministic_valid_and_reversible():
    payment_id = uuid.uuid4()
    txid = txid_for(payment_id)
    assert txid == txid_for(str(payment_id))
    assert is_valid_txid(txid) and 26 <= len(txid) <= 35
    assert payment_id_from_txid(txid) == payment_id
    assert txid_for(uuid.uuid4()) != txid


@pytest.mark.parametrize(
    "txid", ["short", "a" * 25, "a" * 36, "gb" + "-" * 32, "ação" * 8, None, 12345]
)
def test_invalid_txids(txid):
    assert not is_valid_txid(txid)


def test_foreign_txid_has_no_payment_id():
    assert payment_id_from_txid("x" * 30) is None
    assert payment_id_from_txid("gb" + "A" * 32) is None  # ours are lowercase hex
