"""The zero-duplication audit: reconcile what a load test sent with what the system did.

Inputs: the load generator's log of sent updates (JSON lines: bot, update_id, chat, kind,
status, retry), the database, the queues in Redis and the Telegram stand-in's recorded calls.
It first waits until the queues are drained, then checks, for every update the front door
answered 200:
- it was processed once (one inbound_updates row);
- it produced exactly one reply (one outbox row per reply, in status `sent`);
- the stand-in received exactly as many sendMessage calls per chat as the outbox sent to
  that chat, and exactly one answerCallbackQuery per callback query;
- a row whose outcome is unknown to the app, which never re-sends it (left in `sending`
  by a worker killed during the call, or failed because the call timed out after it went
  out) is settled against the stand-in: it counts as delivered if the call arrived, and as
  lost if it did not;
and that nothing was processed that was never sent. The payment side (when a PSP is
configured; it reads the PSP stand-in's records) checks that:
- no lead has two pending charges for one offer, and every charge at the PSP is one of our
  payments (and every payment with a PIX code has its charge there);
- every PSP callback answered 200 was recorded as payment events;
- every paid payment was won by exactly one event (revenue counted once), and nothing else;
- every paid payment has exactly one delivery, and each delivery's access link reached the
  Telegram stand-in exactly once (plus the operator re-sends that were sent).
Any loss or duplicate fails the audit and names the offending ids.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import orjson
from redis import Redis
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from grimbots.models import Delivery, InboundUpdate, Lead, OutboxMessage, Payment, PaymentEvent
from grimbots.outbox import failed_with_unknown_outcome
from grimbots.payments import CODE_KIND, CODE_NOT_SENT
from grimbots.queues import ALL_QUEUES, get_queue
from grimbots.services import Services
from grimbots.statuses import PAID_STATUSES, OutboxStatus, PaymentStatus

# Kinds of update that get one sendMessage reply; a buy callback gets answerCallbackQuery.
MESSAGE_KINDS = {"start", "text"}
# A message's outbox row is `sent`, or `sending` when its worker was killed during the
# call, or failed with an unknown outcome when the call timed out (either way the outcome
# is unknown to the app and settled against the stand-in); never anything else.
DELIVERED_OR_UNKNOWN = (OutboxStatus.SENT, OutboxStatus.SENDING)
# The outcomes of the payment event that wins its payment (grimbots.payments).
WINNING_OUTCOMES = ("confirmed", "late")
# How often the audit looks at the backlog while the workers drain it.
DRAIN_POLL_SECONDS = 2.0


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_problems(self, *found: tuple[str, list[Any]]) -> None:
        """One problem per (label, offending items) that has any: their count, the first 20."""
        for label, items in found:
            if items:
                self.problems.append(f"{label}: {len(items)}, e.g. {items[:20]}")

    def render(self) -> str:
        width = max(len(k) for k in self.counts) if self.counts else 10
        lines = [f"  {name:<{width}}  {value}" for name, value in self.counts.items()]
        lines.append("audit: " + ("OK, 0 lost, 0 duplicated" if self.ok else "FAILED"))
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def read_sent(lines: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines if line.strip()]


def jobs_left(redis: Redis, queues: tuple[str, ...] = ALL_QUEUES) -> dict[str, int]:
    """Jobs of `queues` still queued, running or scheduled (a retry), from Redis alone."""
    left: dict[str, int] = {}
    for name in queues:
        queue = get_queue(name, redis)
        left[f"{name} queued"] = queue.count
        left[f"{name} running"] = StartedJobRegistry(queue=queue).count
        left[f"{name} scheduled"] = ScheduledJobRegistry(queue=queue).count
        # Dequeued but not started: normally for microseconds; longer if its worker died.
        left[f"{name} dequeued"] = len(queue.intermediate_queue.get_job_ids())
    return left


def backlog(services: Services) -> dict[str, int]:
    """Jobs still queued, running or scheduled, and rows still waiting to be worked."""
    left = jobs_left(services.redis.raw)
    with services.db.session() as session:
        left["outbox pending"] = session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.status == OutboxStatus.PENDING)
        )
        left["payment events unprocessed"] = session.scalar(
            select(func.count())
            .select_from(PaymentEvent)
            .where(PaymentEvent.processed_at.is_(None))
        )
    return left


def paid_at_psp_pending_here(services: Services) -> list[str]:
    psp = services.settings.pix.base_url.rstrip("/")
    paid = {c["txid"] for c in _get(f"{psp}/_sandbox/charges?status=CONCLUIDA", "charges")}
    with services.db.session() as session:
        pending = session.scalars(
            select(Payment.txid).where(Payment.status == PaymentStatus.PENDING)
        )
        return sorted(txid for txid in pending if txid in paid)


def wait_until_drained(services: Services, timeout: float) -> dict[str, int]:
    """Wait until nothing is left to work; returns what was left at the deadline.

    The backlog's counts are cheap and polled every DRAIN_POLL_SECONDS. The charges paid at
    the PSP but pending here (a callback refused, say during a restart, is settled by the
    periodic reconcile) mean fetching every paid charge from the stand-in: asked only once
    the rest is drained, so the wait takes no CPU from the workers it waits for.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = {name: count for name, count in backlog(services).items() if count}
        if not left and services.pix is not None:
            unsettled = len(paid_at_psp_pending_here(services))
            if unsettled:
                left["paid at the PSP, pending here"] = unsettled
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(DRAIN_POLL_SECONDS)


def _get(url: str, key: str) -> list[dict[str, Any]]:
    response = httpx.get(url, timeout=60)
    response.raise_for_status()
    body = response.json()
    return body[key] if isinstance(body, dict) else body


def stand_in_calls(services: Services) -> list[dict[str, Any]]:
    return _get(f"{services.settings.telegram_api_url.rstrip('/')}/_sandbox/calls", "calls")


# --- the updates: processed once, replied to once, delivered once -----------------------

Key = tuple[int, int]  # (bot id, update id): one Telegram update


@dataclass
class SentLog:
    """The load generator's log: every request it made, and the updates answered 200."""

    requests: list[dict[str, Any]]
    answered: list[dict[str, Any]]  # the requests answered 200, retries included
    accepted: dict[Key, dict[str, Any]]  # each update answered 200, once
    updates: set[Key]  # every update sent, answered or not
    bots: set[int]
    chats: set[int]  # the chats of the answered updates: this run's users

    @classmethod
    def of(cls, requests: list[dict[str, Any]]) -> SentLog:
        answered = [s for s in requests if s["status"] == 200]
        updates = {(s["bot"], s["update_id"]) for s in requests}
        return cls(
            requests=requests,
            answered=answered,
            accepted={(s["bot"], s["update_id"]): s for s in answered},
            updates=updates,
            bots={bot for bot, _ in updates},
            chats={s["chat"] for s in answered},
        )

    def counts(self) -> dict[str, int]:
        return {
            "updates sent (requests)": len(self.requests),
            "of which retries": sum(1 for s in self.requests if s.get("retry")),
            "answered 200": len(self.answered),
            "answered non-200": len(self.requests) - len(self.answered),
            "unique updates accepted": len(self.accepted),
            "duplicates answered 200 (not re-processed)": len(self.answered) - len(self.accepted),
        }


def processed_updates(session: Session, log: SentLog) -> Counter[Key]:
    """inbound_updates rows per update, over the bots and update ids the log spans."""
    low = min((u for _, u in log.updates), default=0)
    high = max((u for _, u in log.updates), default=-1)
    rows = session.execute(
        select(InboundUpdate.bot_id, InboundUpdate.update_id).where(
            InboundUpdate.bot_id.in_(log.bots),
            InboundUpdate.update_id.between(low, high),
        )
    )
    return Counter(tuple(row) for row in rows)


@dataclass
class Outbox:
    """The outbox rows of the run's bots: each accepted update's replies, and the
    sendMessage rows per chat (payment messages, keys pix:..., count there too)."""

    replies: dict[Key, list[tuple[str, bool]]]  # (method, sent or outcome unknown)
    sent_per_chat: Counter[int]
    interrupted_per_chat: Counter[int]  # left in `sending`: its worker was killed mid-call
    timed_out_per_chat: Counter[int]  # failed, outcome unknown: the call timed out


def read_outbox(session: Session, log: SentLog) -> Outbox:
    rows = session.execute(
        select(
            OutboxMessage.idempotency_key,
            OutboxMessage.chat_id,
            OutboxMessage.method,
            OutboxMessage.status,
            OutboxMessage.error,
        ).where(OutboxMessage.bot_id.in_(log.bots))
    )
    outbox = Outbox(defaultdict(list), Counter(), Counter(), Counter())
    for key, chat_id, method, status, error in rows:
        timed_out = failed_with_unknown_outcome(status, error)
        if method == "sendMessage" and status == OutboxStatus.SENT:
            outbox.sent_per_chat[chat_id] += 1
        elif method == "sendMessage" and status == OutboxStatus.SENDING:
            outbox.interrupted_per_chat[chat_id] += 1
        elif method == "sendMessage" and timed_out:
            outbox.timed_out_per_chat[chat_id] += 1
        # Update replies' keys are tg:<bot>:<chat>:<update>:<kind> (grimbots.outbox).
        if not key.startswith("tg:"):
            continue
        _, bot, _chat, update, _kind = key.split(":", 4)
        bot_update = (int(bot), int(update))
        if bot_update in log.accepted:
            outbox.replies[bot_update].append((method, status in DELIVERED_OR_UNKNOWN or timed_out))
    return outbox


@dataclass
class StandIn:
    """The Telegram stand-in's calls it answered 200: only those delivered something (a
    429 or 500 did not)."""

    calls: list[dict[str, Any]]
    messages_per_chat: Counter[int]  # sendMessage calls to this run's chats
    callback_answers: Counter[str]  # answerCallbackQuery calls per callback query id

    def saw_any(self, chats: set[int]) -> bool:
        return any(c.get("chat_id") is not None and int(c["chat_id"]) in chats for c in self.calls)


def read_stand_in(services: Services, chats: set[int]) -> StandIn:
    calls = [c for c in stand_in_calls(services) if c.get("status") == 200]
    messages = Counter(
        int(c["chat_id"])
        for c in calls
        if c.get("method") == "sendMessage"
        and c.get("chat_id") is not None
        and int(c["chat_id"]) in chats
    )
    answers = Counter(
        str(c["params"].get("callback_query_id"))
        for c in calls
        if c.get("method") == "answerCallbackQuery"
    )
    return StandIn(calls, messages, answers)


class Processing(NamedTuple):
    rows: int  # inbound_updates rows
    lost: list[Key]  # accepted, never processed
    twice: list[Key]
    phantom: list[Key]  # processed, never sent


def check_processing(log: SentLog, processed: Counter[Key]) -> Processing:
    """Each accepted update processed once, and nothing that was never sent."""
    return Processing(
        rows=sum(processed.values()),
        lost=sorted(k for k in log.accepted if processed[k] == 0),
        twice=sorted(k for k, n in processed.items() if n > 1),
        phantom=sorted(k for k in processed if k not in log.updates),
    )


class Replies(NamedTuple):
    missing: list[Key]
    more_than_one: list[Key]
    unsent: list[Key]  # a reply neither sent nor of unknown outcome (pending or failed)


def check_replies(log: SentLog, outbox: Outbox) -> Replies:
    """Each accepted update's one reply in the outbox: sendMessage for a message,
    answerCallbackQuery for a callback query."""
    missing, more_than_one, unsent = [], [], []
    for key, s in log.accepted.items():
        replies = outbox.replies.get(key, [])
        want = "sendMessage" if s["kind"] in MESSAGE_KINDS else "answerCallbackQuery"
        n = [method for method, _ in replies].count(want)
        if n == 0:
            missing.append(key)
        elif n > 1:
            more_than_one.append(key)
        if not all(settled for _, settled in replies):
            unsent.append(key)
    return Replies(missing, more_than_one, unsent)


class ChatMessages(NamedTuple):
    # (chat, outbox sent, outcome unknown, stand-in received) where they do not add up
    mismatch: list[tuple[int, int, int, int]]
    interrupted: int
    timed_out: int
    unknown_arrived: int


def check_chat_messages(chats: set[int], outbox: Outbox, stand_in: StandIn) -> ChatMessages:
    """Per chat the stand-in must hold every `sent` row and every row whose outcome is
    unknown (interrupted or timed out: it was never re-sent, so it counts once if it
    arrived): fewer calls means a message was lost, more means one was duplicated."""
    sent, received = outbox.sent_per_chat, stand_in.messages_per_chat
    unknown = outbox.interrupted_per_chat + outbox.timed_out_per_chat
    return ChatMessages(
        mismatch=sorted(
            (chat, sent[chat], unknown[chat], received[chat])
            for chat in chats
            if received[chat] != sent[chat] + unknown[chat]
        ),
        interrupted=sum(outbox.interrupted_per_chat[chat] for chat in chats),
        timed_out=sum(outbox.timed_out_per_chat[chat] for chat in chats),
        unknown_arrived=sum(
            min(max(received[chat] - sent[chat], 0), unknown[chat]) for chat in chats
        ),
    )


class CallbackAnswers(NamedTuple):
    answers: int
    not_once: list[int]  # update ids (= callback query ids) not answered exactly once


def check_callback_answers(log: SentLog, stand_in: StandIn) -> CallbackAnswers:
    """Each accepted buy callback answered once at the stand-in (its query id is the
    update id, by the load generator's convention)."""
    answers = [
        (s["update_id"], stand_in.callback_answers[str(s["update_id"])])
        for s in log.accepted.values()
        if s["kind"] == "buy"
    ]
    return CallbackAnswers(
        answers=sum(n for _, n in answers),
        not_once=sorted(update_id for update_id, n in answers if n != 1),
    )


def audit(services: Services, sent: list[dict[str, Any]], drain_timeout: float) -> Report:
    """Wait for the drain, then check the updates and, with a PSP, the payments."""
    report = Report()
    left = wait_until_drained(services, drain_timeout)
    if left:
        report.problems.append(f"queues not drained after {drain_timeout:.0f}s: {left}")
    log = SentLog.of(sent)
    with services.db.session() as session:
        processed = processed_updates(session, log)
        outbox = read_outbox(session, log)
    stand_in = read_stand_in(services, log.chats)
    if log.chats and not stand_in.saw_any(log.chats):
        # The stand-ins keep their records in memory: a restart (a `make lab` that changed
        # the app) forgets the run, and every check below would report it all as lost.
        report.problems.append(
            "the Telegram stand-in has no call for any chat of this run: was it restarted "
            "since the load test? Its records live in memory; audit a run before `make lab`."
        )
    audit_updates(log, processed, outbox, stand_in, report)
    if services.pix is not None:
        audit_payments(services, log.bots, log.chats, stand_in.calls, report)
    return report


def audit_updates(
    log: SentLog, processed: Counter[Key], outbox: Outbox, stand_in: StandIn, report: Report
) -> None:
    """Each accepted update processed once, replied to once, its reply delivered once."""
    processing = check_processing(log, processed)
    replies = check_replies(log, outbox)
    messages = check_chat_messages(log.chats, outbox, stand_in)
    callbacks = check_callback_answers(log, stand_in)
    report.counts = {
        **log.counts(),
        "updates processed (db rows)": processing.rows,
        "replies sent (stand-in sendMessage)": sum(stand_in.messages_per_chat.values()),
        "callback answers (stand-in)": callbacks.answers,
        "lost (accepted, never processed)": len(processing.lost),
        "processed twice": len(processing.twice),
        "updates without their reply": len(replies.missing),
        "updates with more than one reply": len(replies.more_than_one),
        "messages interrupted by a killed worker": messages.interrupted,
        "messages whose call timed out (outcome unknown)": messages.timed_out,
        "of which reached the stand-in": messages.unknown_arrived,
        "chats whose message count differs at the stand-in": len(messages.mismatch),
    }
    report.add_problems(
        ("accepted but never processed", processing.lost),
        ("processed twice", processing.twice),
        ("processed but never sent by the generator", processing.phantom),
        ("no reply in the outbox", replies.missing),
        ("more than one reply in the outbox", replies.more_than_one),
        ("outbox rows not in status sent", replies.unsent),
        ("chat (outbox sent, outcome unknown, stand-in received) differ", messages.mismatch),
        ("callback queries not answered exactly once", callbacks.not_once),
    )


# --- the payments: charged once, paid once, counted once, delivered once -----------------


@dataclass
class Payments:
    """What the database holds about the run's payments (`bots`, `chats`: its users)."""

    rows: list[Row]  # the run's payments: id, txid, status, amount_cents, has a PIX code
    all_txids: set[str]  # every payment's txid, any run
    two_pending: list[tuple]  # (lead, offer, count) with more than one pending charge
    events: list[Row]  # every payment event: event_key, payment_id, outcome, txid
    deliveries: list[Row]  # the run's: id, payment_id, access_token, its message's status
    codes_dropped: int  # PIX code messages not sent: the charge was settled first
    resends: Counter[int]  # operator re-sends sent, per delivery id

    @property
    def txids(self) -> set[str]:
        return {r.txid for r in self.rows}

    @property
    def paid(self) -> dict[Any, Row]:
        return {r.id: r for r in self.rows if r.status in PAID_STATUSES}


def read_payments(session: Session, bots: set[int], chats: set[int]) -> Payments:
    of_the_run = (Payment.bot_id.in_(bots), Lead.telegram_user_id.in_(chats))
    return Payments(
        rows=session.execute(
            select(
                Payment.id,
                Payment.txid,
                Payment.status,
                Payment.amount_cents,
                Payment.pix_copy_paste.is_not(None),
            )
            .join(Lead, Lead.id == Payment.lead_id)
            .where(*of_the_run)
        ).all(),
        all_txids=set(session.scalars(select(Payment.txid))),
        two_pending=[
            tuple(t)
            for t in session.execute(
                select(Payment.lead_id, Payment.offer_id, func.count())
                .where(Payment.status == PaymentStatus.PENDING)
                .group_by(Payment.lead_id, Payment.offer_id)
                .having(func.count() > 1)
            )
        ],
        events=session.execute(
            select(
                PaymentEvent.event_key,
                PaymentEvent.payment_id,
                PaymentEvent.outcome,
                PaymentEvent.txid,
            )
        ).all(),
        deliveries=session.execute(
            select(Delivery.id, Delivery.payment_id, Delivery.access_token, OutboxMessage.status)
            .outerjoin(OutboxMessage, OutboxMessage.id == Delivery.outbox_message_id)
            .join(Payment, Payment.id == Delivery.payment_id)
            .join(Lead, Lead.id == Payment.lead_id)
            .where(*of_the_run)
        ).all(),
        codes_dropped=session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(
                OutboxMessage.kind == CODE_KIND,
                OutboxMessage.status == OutboxStatus.FAILED,
                OutboxMessage.error.startswith(CODE_NOT_SENT),
                OutboxMessage.bot_id.in_(bots),
                OutboxMessage.chat_id.in_(chats),
            )
        ),
        # Keys pix:resend:<delivery id>:... (grimbots.deliveries).
        resends=Counter(
            int(key.split(":")[2])
            for key in session.scalars(
                select(OutboxMessage.idempotency_key).where(
                    OutboxMessage.idempotency_key.like("pix:resend:%"),
                    OutboxMessage.status == OutboxStatus.SENT,
                )
            )
        ),
    )


class Charges(NamedTuple):
    ours_at_the_psp: int
    foreign: list[str]  # txids at the PSP that are none of our payments
    missing: list[str]  # payment ids with a PIX code but no charge at the PSP


def check_charges(payments: Payments, charges: list[dict[str, Any]]) -> Charges:
    """Every charge at the PSP is one of our payments, and every PIX code has its charge."""
    at_psp = Counter(c["txid"] for c in charges)
    ours = payments.txids
    return Charges(
        ours_at_the_psp=sum(1 for t in at_psp if t in ours),
        foreign=sorted(t for t in at_psp if t not in payments.all_txids),
        missing=sorted(str(r.id) for r in payments.rows if r[4] and r.txid not in at_psp),
    )


class Callbacks(NamedTuple):
    answered_200: int  # this run's
    refused: int  # this run's, answered non-200
    lost: list[str]  # end-to-end ids answered 200 but not recorded as events


def check_callbacks(payments: Payments, notifications: list[dict[str, Any]]) -> Callbacks:
    """Every PSP callback answered 200 was recorded as payment events. Checked over the
    stand-in's whole memory (earlier runs too); counted for this run."""
    recorded = {e.event_key for e in payments.events}
    notified = {key for n in notifications if n.get("status") == 200 for key in n["end_to_end_ids"]}
    ours = payments.txids
    this_run = [n for n in notifications if ours.intersection(n.get("txids") or ())]
    return Callbacks(
        answered_200=sum(n.get("status") == 200 for n in this_run),
        refused=sum(n.get("status") != 200 for n in this_run),
        lost=sorted(notified - recorded),
    )


class Revenue(NamedTuple):
    not_won_once: list[str]  # paid payments not won by exactly one event
    won_unpaid: list[str]


def check_revenue(payments: Payments) -> Revenue:
    """Every paid payment won by exactly one event (revenue counted once), and nothing else."""
    paid = payments.paid
    winners = Counter(e.payment_id for e in payments.events if e.outcome in WINNING_OUTCOMES)
    scoped = {r.id for r in payments.rows}
    return Revenue(
        not_won_once=sorted(str(p) for p in paid if winners[p] != 1),
        won_unpaid=sorted(str(p) for p in winners if p in scoped and p not in paid),
    )


class Deliveries(NamedTuple):
    messages: int  # delivery messages at the stand-in
    not_once: list[str]  # paid payments without exactly one delivery
    unpaid: list[str]  # deliveries of unpaid payments
    # (payment, status, expected, received): access links not at the stand-in as expected
    wrong_messages: list[tuple[str, str, int, int]]


def check_deliveries(payments: Payments, calls: list[dict[str, Any]]) -> Deliveries:
    """Every paid payment has one delivery, whose access link reached the stand-in once,
    plus once per operator re-send that was sent."""
    paid = payments.paid
    per_payment = Counter(d.payment_id for d in payments.deliveries)
    texts = [c.get("text") or "" for c in calls if c.get("method") == "sendMessage"]
    received = {
        d.id: sum(1 for text in texts if f"access={d.access_token}" in text)
        for d in payments.deliveries
    }
    wrong = []
    for d in payments.deliveries:
        # `sending`: killed mid-call, so it is delivered only if the call arrived.
        expected = (1 if d.status in DELIVERED_OR_UNKNOWN else 0) + payments.resends[d.id]
        if d.status not in DELIVERED_OR_UNKNOWN or received[d.id] != expected:
            wrong.append((str(d.payment_id), d.status, expected, received[d.id]))
    return Deliveries(
        messages=sum(received[d.id] for d in payments.deliveries),
        not_once=sorted(str(p) for p in paid if per_payment[p] != 1),
        unpaid=sorted(str(d.payment_id) for d in payments.deliveries if d.payment_id not in paid),
        wrong_messages=wrong,
    )


def audit_payments(
    services: Services,
    bots: set[int],
    chats: set[int],
    calls: list[dict[str, Any]],
    report: Report,
) -> None:
    """The payment side: the payments of the load test's users (`chats`: their Telegram
    ids, fresh in every run) with `bots`; `calls` are the Telegram stand-in's answered
    calls."""
    psp = services.settings.pix.base_url.rstrip("/")
    at_psp = _get(f"{psp}/_sandbox/charges", "charges")
    notifications = _get(f"{psp}/_sandbox/notifications", "notifications")
    with services.db.session() as session:
        payments = read_payments(session, bots, chats)
    charges = check_charges(payments, at_psp)
    callbacks = check_callbacks(payments, notifications)
    revenue = check_revenue(payments)
    deliveries = check_deliveries(payments, calls)
    unsettled = paid_at_psp_pending_here(services)
    paid, ours = payments.paid, payments.txids
    report.counts.update(
        {
            "charges (payments)": len(payments.rows),
            "charges at the PSP stand-in (ours)": charges.ours_at_the_psp,
            "payments confirmed (paid + paid_late)": len(paid),
            "revenue counted (cents)": sum(r.amount_cents for r in paid.values()),
            "PIX codes not sent (charge settled first)": payments.codes_dropped,
            "PSP callbacks sent (answered 200)": callbacks.answered_200,
            "PSP callbacks refused (non-200)": callbacks.refused,
            "payment events recorded": sum(1 for e in payments.events if e.txid in ours),
            "deliveries": len(payments.deliveries),
            "delivery messages at the stand-in": deliveries.messages,
        }
    )
    report.add_problems(
        ("lead+offer with more than one pending charge", payments.two_pending),
        ("charges at the PSP that are none of our payments", charges.foreign),
        ("payments with a PIX code but no charge at the PSP", charges.missing),
        ("PSP callbacks answered 200 but not recorded", callbacks.lost),
        ("charges paid at the PSP whose payment is still pending", unsettled),
        ("paid payments not won by exactly one event (revenue)", revenue.not_won_once),
        ("payments won by an event but not paid", revenue.won_unpaid),
        ("paid payments without exactly one delivery", deliveries.not_once),
        ("deliveries for unpaid payments", deliveries.unpaid),
        (
            "deliveries (payment, status, expected, received) not at the stand-in once",
            deliveries.wrong_messages,
        ),
    )
