"""Database tables (SQLAlchemy 2 typed models).

The constraints declared here (unique keys, foreign keys, checks) are what make the
exactly-once story true, so they live in the database, not only in Python. Every change
goes through an Alembic migration; tests assert the models and the migrations agree.
Issue 4 adds payments, payment_events and deliveries (grimbots.payments).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from grimbots.statuses import OutboxStatus, PaymentStatus, status_in

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
    # The bot's @username from getMe (set-webhook learns it): tells group commands meant
    # for us ("/start@ThisBot") from those for other bots. None until known.
    username: Mapped[str | None] = mapped_column(String(64))
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
        CheckConstraint(status_in(OutboxStatus.ALL), name="status_known"),
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
    status: Mapped[str] = mapped_column(
        String(16), server_default=text(f"'{OutboxStatus.PENDING}'"), index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Payment(Base):
    """One PIX charge for (lead, offer). Its txid is derived from its id (grimbots.pix.txid)."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(status_in(PaymentStatus.ALL), name="status_known"),
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint("charge_attempts >= 0", name="charge_attempts_not_negative"),
        # A double-tapped "buy" finds the open charge instead of making a second one.
        Index(
            "uq_payments_one_pending_per_lead_offer",
            "lead_id",
            "offer_id",
            unique=True,
            postgresql_where=text(f"status = '{PaymentStatus.PENDING}'"),
            sqlite_where=text(f"status = '{PaymentStatus.PENDING}'"),
        ),
        Index("ix_payments_status_created_at", "status", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"))
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    offer_id: Mapped[int] = mapped_column(ForeignKey("offers.id", ondelete="CASCADE"))
    amount_cents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(
        String(16), server_default=text(f"'{PaymentStatus.PENDING}'")
    )
    provider: Mapped[str] = mapped_column(String(32))
    txid: Mapped[str] = mapped_column(String(35), unique=True)
    pix_copy_paste: Mapped[str | None] = mapped_column(Text)
    # PUT /cob calls started; more than 0 means "ask the PSP before creating it again".
    charge_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PaymentEvent(Base):
    """One PIX the PSP reported (callback or status query), once per (provider, endToEndId).

    Kept whatever it turned out to be, for audit: the raw callback body, the payment it
    paid (if any), and why it did not count (flags).
    """

    __tablename__ = "payment_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_key", name="uq_payment_events_provider_event_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_key: Mapped[str] = mapped_column(String(64))  # the Central Bank's endToEndId
    source: Mapped[str] = mapped_column(String(16))  # webhook | reconcile
    txid: Mapped[str | None] = mapped_column(String(35), index=True)
    payment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("payments.id", ondelete="SET NULL"), index=True
    )
    amount_cents: Mapped[int] = mapped_column(Integer)
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    raw_body: Mapped[str] = mapped_column(Text)
    amount_mismatch: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    late: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    unknown_txid: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Listed by the PSP's own charge status (GET /cob): only such an event moves money. A
    # callback is recorded unconfirmed, then confirmed (or not) by asking the PSP.
    psp_confirmed: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # The callback claimed another amount than the PSP's record of the same PIX.
    callback_mismatch: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # What processing made of it: confirmed, late, duplicate, amount_mismatch, ...
    outcome: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[datetime] = _created_at()
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Delivery(Base):
    """The access link sent for one paid payment: at most one per payment, ever."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("payments.id", ondelete="CASCADE"), unique=True
    )
    access_token: Mapped[str] = mapped_column(String(64), unique=True)
    outbox_key: Mapped[str] = mapped_column(String(200), unique=True)
    outbox_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbox_messages.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created_at()
