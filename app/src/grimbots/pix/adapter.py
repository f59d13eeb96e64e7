"""What the app needs from a payment service provider (PSP), whatever its API.

Jobs create a charge and ask for its status; the webhook turns the PSP's callback into
payment notices. Every call that talks to the PSP answers with a `PixResult` whose outcome
says what the caller may do next, in the same terms as the Telegram client:

- ok:        done; `value` holds the Charge or ChargeStatus.
- transient: nothing changed at the PSP (connection refused, 5xx, 429, token failure):
             safe to retry later.
- unknown:   the request went out and no answer came back (read timeout after a charge
             request): the charge may exist. Ask `charge_status` before creating it again.
- rejected:  the PSP refused the request (4xx); retrying the same request will not help.
             A status query for a charge the PSP does not know is rejected with 404
             (`result.not_found`).

Money is integer cents everywhere in our code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, Protocol, TypeVar

Outcome = Literal["ok", "transient", "unknown", "rejected"]

# API Pix charge statuses.
ATIVA = "ATIVA"
CONCLUIDA = "CONCLUIDA"
REMOVIDA_PELO_USUARIO_RECEBEDOR = "REMOVIDA_PELO_USUARIO_RECEBEDOR"
REMOVIDA_PELO_PSP = "REMOVIDA_PELO_PSP"
CHARGE_STATUSES = (ATIVA, CONCLUIDA, REMOVIDA_PELO_USUARIO_RECEBEDOR, REMOVIDA_PELO_PSP)

T = TypeVar("T")


@dataclass(frozen=True)
class Charge:
    """An immediate charge as the PSP created it; pix_copy_paste goes to the buyer."""

    txid: str
    status: str
    amount_cents: int
    pix_copy_paste: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class PixPayment:
    """One PIX transfer that paid a charge; end_to_end_id is unique at the Central Bank."""

    end_to_end_id: str
    amount_cents: int
    paid_at: datetime


@dataclass(frozen=True)
class ChargeStatus:
    txid: str
    status: str
    amount_cents: int
    payments: tuple[PixPayment, ...] = ()

    @property
    def is_active(self) -> bool:
        return self.status == ATIVA

    @property
    def is_paid(self) -> bool:
        return self.status == CONCLUIDA and bool(self.payments)

    @property
    def is_removed(self) -> bool:
        return self.status in (REMOVIDA_PELO_USUARIO_RECEBEDOR, REMOVIDA_PELO_PSP)

    @property
    def paid_cents(self) -> int:
        return sum(payment.amount_cents for payment in self.payments)


@dataclass(frozen=True)
class PaymentNotice:
    """One paid PIX from a PSP callback.

    txid is None for a PIX that paid no charge of ours (for example a transfer straight to
    the key); the caller records or ignores it. event_key is the idempotency key of the
    notice: the same payment notified twice has the same key.
    """

    end_to_end_id: str
    txid: str | None
    amount_cents: int
    paid_at: datetime
    payer_info: str | None = None

    @property
    def event_key(self) -> str:
        return self.end_to_end_id


@dataclass(frozen=True)
class Callback:
    """What one PSP callback body holds: the notices that parsed, and why others did not.

    One malformed entry never holds back the valid ones of the same body: those are
    recorded, the rest reported (money moves only on what the PSP confirms anyway, and the
    reconciliation asks about every charge still pending)."""

    notices: list[PaymentNotice]
    rejected: list[str]


@dataclass(frozen=True)
class PixResult(Generic[T]):
    outcome: Outcome
    value: T | None = None
    status_code: int | None = None
    description: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def not_found(self) -> bool:
        return self.outcome == "rejected" and self.status_code == 404


class PspUnavailable(Exception):
    """The PSP did not answer (or not readably): the job raising it is retried later."""


class NotificationRejected(Exception):
    """A PSP callback we refuse; `http_status` is what the webhook should answer."""

    http_status = 400

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NotificationUnauthorized(NotificationRejected):
    """Missing or wrong authentication (reason "signature"): answer 401, parse nothing."""

    http_status = 401


class NotificationMalformed(NotificationRejected):
    """Authentic but unreadable body (bad JSON, missing field, bad valor): answer 400."""

    http_status = 400


class PixAdapter(Protocol):
    """A PSP. `provider` names it in URLs (/webhook/pix/<provider>) and in event keys."""

    provider: str

    def create_charge(
        self,
        txid: str,
        amount_cents: int,
        expires_in_seconds: int | None = None,
        description: str | None = None,
    ) -> PixResult[Charge]:
        """Create (or find again, for the same txid and amount) an immediate charge."""
        ...

    def charge_status(self, txid: str) -> PixResult[ChargeStatus]: ...

    def register_webhook(self, webhook_url: str, dry_run: bool = False) -> PixResult[bool]:
        """Make the PSP send its callbacks to webhook_url (idempotent); value: changed."""
        ...

    def verify_client(self, headers: Mapping[str, str]) -> None:
        """Check the caller before its body is read (mutual TLS, as the TLS terminator in
        front reports it); raise NotificationUnauthorized. A no-op when not configured."""
        ...

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Callback:
        """Authenticate (signature) then parse a callback; raise NotificationRejected (a
        subclass) when nothing in it can be taken."""
        ...
