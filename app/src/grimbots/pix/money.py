"""Money at the PSP boundary: integer cents inside, API Pix "valor" strings outside.

API Pix writes amounts as decimal strings in reais ("12.34"). Floats never touch them:
a string is checked against the API's shape and converted through Decimal, exactly.
"""

from __future__ import annotations

import re
from decimal import Decimal

# API Pix: up to 10 integer digits and exactly 2 decimals ("\d{1,10}\.\d{2}"), and only ASCII
# digits are money: Python's \d also matches Arabic-Indic or fullwidth digits.
_VALOR = re.compile(r"[0-9]{1,10}\.[0-9]{2}")
MAX_CENTS = 9_999_999_999_99


class InvalidAmount(ValueError):
    """An amount that is not a non-negative value in reais with at most 2 decimals."""


def cents_from_valor(valor: object) -> int:
    """'12.34' -> 1234. Rejects anything but ASCII digits, a dot and exactly 2 decimals."""
    if not isinstance(valor, str) or not _VALOR.fullmatch(valor):
        raise InvalidAmount(f"valor must look like '12.34', got {valor!r}")
    cents = Decimal(valor) * 100
    # Exact by construction (at most 2 decimals), checked anyway: money must never round.
    if cents != cents.to_integral_value():
        raise InvalidAmount(f"valor has more than 2 decimals: {valor!r}")
    return int(cents)


def valor_from_cents(cents: int) -> str:
    """1234 -> '12.34', the exact form API Pix expects in valor.original."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise InvalidAmount(f"amount must be an integer number of cents, got {cents!r}")
    if not 0 <= cents <= MAX_CENTS:
        raise InvalidAmount(f"amount must be between 0 and {MAX_CENTS} cents, got {cents}")
    reais, rest = divmod(cents, 100)
    return f"{reais}.{rest:02d}"


def brl_label(cents: int) -> str:
    """1990 -> 'R$ 19,90': how buyers read a price."""
    return f"R$ {cents // 100},{cents % 100:02d}"
