"""Payments: PIX charges, PSP payment events, deliveries of the access link.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PENDING = sa.text("status = 'pending'")


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "payments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("bot_id", sa.Integer(), nullable=False),
        sa.Column("lead_id", BigId, nullable=False),
        sa.Column("offer_id", sa.Integer(), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column(
            "status", sa.String(length=16), server_default=sa.text("'pending'"), nullable=False
        ),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("txid", sa.String(length=35), nullable=False),
        sa.Column("pix_copy_paste", sa.Text(), nullable=True),
        sa.Column("charge_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("expires_at", nullable=True),
        _timestamp("paid_at", nullable=True),
        _timestamp("expired_at", nullable=True),
        _timestamp("failed_at", nullable=True),
        sa.CheckConstraint("amount_cents > 0", name=op.f("ck_payments_amount_positive")),
        sa.CheckConstraint(
            "charge_attempts >= 0", name=op.f("ck_payments_charge_attempts_not_negative")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'paid', 'expired', 'failed', 'paid_late')",
            name=op.f("ck_payments_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["bot_id"], ["bots.id"], name=op.f("fk_payments_bot_id_bots"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_payments_lead_id_leads"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["offer_id"],
            ["offers.id"],
            name=op.f("fk_payments_offer_id_offers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("txid", name=op.f("uq_payments_txid")),
    )
    op.create_index(
        "uq_payments_one_pending_per_lead_offer",
        "payments",
        ["lead_id", "offer_id"],
        unique=True,
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.create_index("ix_payments_status_created_at", "payments", ["status", "created_at"])

    op.create_table(
        "payment_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("event_key", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("txid", sa.String(length=35), nullable=True),
        sa.Column("payment_id", sa.Uuid(), nullable=True),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        _timestamp("paid_at", nullable=True),
        sa.Column("raw_body", sa.Text(), nullable=False),
        sa.Column("amount_mismatch", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("late", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("unknown_txid", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        _timestamp("received_at"),
        _timestamp("processed_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["payments.id"],
            name=op.f("fk_payment_events_payment_id_payments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_events")),
        sa.UniqueConstraint("provider", "event_key", name="uq_payment_events_provider_event_key"),
    )
    op.create_index(op.f("ix_payment_events_txid"), "payment_events", ["txid"])
    op.create_index(op.f("ix_payment_events_payment_id"), "payment_events", ["payment_id"])

    op.create_table(
        "deliveries",
        sa.Column("id", BigId, nullable=False),
        sa.Column("payment_id", sa.Uuid(), nullable=False),
        sa.Column("access_token", sa.String(length=64), nullable=False),
        sa.Column("outbox_key", sa.String(length=200), nullable=False),
        sa.Column("outbox_message_id", BigId, nullable=True),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["payments.id"],
            name=op.f("fk_deliveries_payment_id_payments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["outbox_message_id"],
            ["outbox_messages.id"],
            name=op.f("fk_deliveries_outbox_message_id_outbox_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("access_token", name=op.f("uq_deliveries_access_token")),
        sa.UniqueConstraint("outbox_key", name=op.f("uq_deliveries_outbox_key")),
        sa.UniqueConstraint("payment_id", name=op.f("uq_deliveries_payment_id")),
    )


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_index(op.f("ix_payment_events_payment_id"), table_name="payment_events")
    op.drop_index(op.f("ix_payment_events_txid"), table_name="payment_events")
    op.drop_table("payment_events")
    op.drop_index("ix_payments_status_created_at", table_name="payments")
    op.drop_index("uq_payments_one_pending_per_lead_offer", table_name="payments")
    op.drop_table("payments")
