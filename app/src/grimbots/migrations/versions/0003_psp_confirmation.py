"""Payment events: confirmed by the PSP itself, and callbacks that disagreed with it.

A callback is a hint: an event moves money only once the PSP's own charge status lists
it (grimbots.payments.apply_event). Events recorded before this revision were all
processed already; they are marked confirmed so that nothing about them changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payment_events") as batch:
        batch.add_column(
            sa.Column(
                "psp_confirmed", sa.Boolean(), server_default=sa.text("false"), nullable=False
            )
        )
        batch.add_column(
            sa.Column(
                "callback_mismatch", sa.Boolean(), server_default=sa.text("false"), nullable=False
            )
        )
    op.execute("UPDATE payment_events SET psp_confirmed = true WHERE processed_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("payment_events") as batch:
        batch.drop_column("callback_mismatch")
        batch.drop_column("psp_confirmed")
