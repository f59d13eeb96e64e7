"""Charge ids (txid) for API Pix, derived from our payment ids.

API Pix lets the receiver choose the txid of an immediate charge: 26 to 35 characters of
[a-zA-Z0-9]. Deriving it from the payment's UUID makes the charge creation repeatable: a
job that dies after the PSP created the charge asks for the same txid again and finds the
existing charge instead of making a second one.
"""

from __future__ import annotations

import re
import uuid

TXID_PREFIX = "gb"  # marks our charges in the PSP's console; "gb" + 32 hex = 34 characters
_TXID = re.compile(r"[a-zA-Z0-9]{26,35}")
_OUR_TXID = re.compile(TXID_PREFIX + r"([0-9a-f]{32})")


def is_valid_txid(txid: object) -> bool:
    return isinstance(txid, str) and _TXID.fullmatch(txid) is not None


def txid_for(payment_id: uuid.UUID | str) -> str:
    """The deterministic txid of a payment: 'gb' + the UUID's 32 hex digits."""
    value = payment_id if isinstance(payment_id, uuid.UUID) else uuid.UUID(str(payment_id))
    return TXID_PREFIX + value.hex


def payment_id_from_txid(txid: str) -> uuid.UUID | None:
    """The payment UUID behind one of our txids, or None for a txid we did not make."""
    match = _OUR_TXID.fullmatch(txid)
    return uuid.UUID(hex=match.group(1)) if match else None
