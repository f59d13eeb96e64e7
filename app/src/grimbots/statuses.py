"""The status values of the outbox and of payments, defined once: the models' columns and
check constraints, the queries and the command line use these names. (Migrations keep
their own literals: a migration is a frozen record of the schema it created.)"""

from __future__ import annotations


class OutboxStatus:
    """An outbox row: pending -> sending (claimed) -> sent | failed, or back to pending."""

    PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
    ALL = (PENDING, SENDING, SENT, FAILED)


class PaymentStatus:
    """pending -> paid | expired | failed, and expired -> paid_late (money arrived after we
    had given the charge up; see grimbots.payments). Every move is a compare-and-set."""

    PENDING, PAID, EXPIRED, FAILED, PAID_LATE = "pending", "paid", "expired", "failed", "paid_late"
    ALL = (PENDING, PAID, EXPIRED, FAILED, PAID_LATE)


PAID_STATUSES = (PaymentStatus.PAID, PaymentStatus.PAID_LATE)


def status_in(values: tuple[str, ...]) -> str:
    """The check constraint's SQL for a status column: status IN ('a', 'b')."""
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"
