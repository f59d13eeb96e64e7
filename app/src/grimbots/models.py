"""Database tables (SQLAlchemy 2 typed models).

The constraints declared here (unique keys, foreign keys, checks) are what make the
exactly-once story true, so they live in the database, not only in Python. Every change
goes through an Alembic migration; tests assert the models and the migrations agree.
Issue 4 adds payments, payment_events and deliveries next to these tables.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an "INTEGER PRIMARY KEY"; PostgreSQL gets a real bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")

OUTBOX_STATUSES = ("pending", "sending", "sent", "failed")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def _updated_at() -> Mapped[datetime]:
    return mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class Bot(Base):
    __tablename__ = "bots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # The Bot API token is a credential: __repr__ below is written by hand to leave it out,
    # and the admin API and `bots list` never select it.
    token: Mapped[str] = mapped_column(String(128))
    # Telegram sends it back in X-Telegram-Bot-Api-Secret-Token on every webhook call.
    webhook_secret: Mapped[str] = mapped_column(String(256))
    welcome_text: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()

    def __repr__(self) -> str:
        return f"Bot(id={self.id!r}, name={self.name!r})"


class Offer(Base):
    __tablename__ = "offers"
    __table_args__ = (
        UniqueConstraint("bot_id", "name", name="uq_offers_bot_id_name"),
        CheckConstraint("price_cents > 0", name="price_positive"),
        CheckConstraint("currency = 'BRL'", name="currency_brl"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    price_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), server_default=text("'BRL'"))
    access_link: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()

    def __repr__(self) -> str:
        return f"Offer(id={self.id!r}, bot_id={self.bot_id!r}, name={self.name!r})"


class Lead(Base):
    """A Telegram user who talked to one of our bots."""

    __tablename__ = "leads"
    __table_args__ = (
        UniqueConstraint("bot_id", "telegram_user_id", name="uq_leads_bot_id_telegram_user_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"))
    telegram_user_id: Mapped[int] = mapped_column(BigInteger)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    first_name: Mapped[str | None] = mapped_column(String(256))
    username: Mapped[str | None] = mapped_column(String(64))
    # Set when Telegram answers 403 (the user blocked the bot); cleared when they write again.
    blocked: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class InboundUpdate(Base):
    """Every Telegram update we processed, once: the durable half of the dedupe."""

    __tablename__ = "inbound_updates"
    __table_args__ = (
        UniqueConstraint("bot_id", "update_id", name="uq_inbound_updates_bot_update"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"))
    update_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = _created_at()


class OutboxMessage(Base):
    """One outgoing Bot API call. Sent only by whoever moves it pending -> sending."""

    __tablename__ = "outbox_messages"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sending', 'sent', 'failed')", name="status_known"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # For example "tg:<bot>:<chat>:<update>:welcome": the same work always maps to one row.
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"))
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id", ondelete="SET NULL"))
    chat_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # JSON body of the Bot API call
    status: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
