"""PIX payments through a payment service provider (PSP).

- adapter:       the interface jobs and the webhook use, its data and its result objects
- api_pix:       the Central Bank's standard API Pix (OAuth2, `cob`), our one PSP today
- notifications: callback authentication (HMAC signature) and parsing
- settings:      PixSettings from GRIMBOTS_PIX_* variables
- money, txid, brcode: amounts in cents, charge ids, the copy-and-paste code
"""

from grimbots.pix.adapter import (
    ATIVA,
    CONCLUIDA,
    REMOVIDA_PELO_PSP,
    REMOVIDA_PELO_USUARIO_RECEBEDOR,
    Charge,
    ChargeStatus,
    NotificationMalformed,
    NotificationRejected,
    NotificationUnauthorized,
    Outcome,
    PaymentNotice,
    PixAdapter,
    PixPayment,
    PixResult,
    PspUnavailable,
)
from grimbots.pix.api_pix import ApiPixAdapter
from grimbots.pix.money import InvalidAmount, brl_label, cents_from_valor, valor_from_cents
from grimbots.pix.settings import PixSettings
from grimbots.pix.txid import is_valid_txid, payment_id_from_txid, txid_for

__all__ = [
    "ATIVA",
    "CONCLUIDA",
    "REMOVIDA_PELO_PSP",
    "REMOVIDA_PELO_USUARIO_RECEBEDOR",
    "ApiPixAdapter",
    "Charge",
    "ChargeStatus",
    "InvalidAmount",
    "NotificationMalformed",
    "NotificationRejected",
    "NotificationUnauthorized",
    "Outcome",
    "PaymentNotice",
    "PixAdapter",
    "PixPayment",
    "PixResult",
    "PixSettings",
    "PspUnavailable",
    "brl_label",
    "cents_from_valor",
    "is_valid_txid",
    "payment_id_from_txid",
    "txid_for",
    "valor_from_cents",
]
