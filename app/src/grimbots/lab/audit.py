"""The zero-duplication audit: reconcile what a load test sent with what the system did.

Inputs: the load generator's log of sent updates (JSON lines: bot, update_id, chat, kind,
status, retry), the database, the queues in Redis and the Telegram stand-in's recorded calls.
It first waits until the queues are drained, then checks, for every update the front door
answered 200:
- it was processed once (one inbound_updates row);
- it produced exactly one reply (one outbox row per reply, in status `sent`);
- the stand-in received exactly as many sendMessage calls per chat as the outbox sent to
  that chat, and exactly one answerCallbackQuery per callback query;
- a row left in `sending` (its worker was killed during the call: the outcome is unknown
  to the app, which never re-sends it) is settled against the stand-in: it counts as
  delivered if the call arrived, and as lost if it did not;
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
from typing import Any

import httpx
import orjson
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import func, select

from grimbots.models import Delivery, InboundUpdate, Lead, OutboxMessage, Payment, PaymentEvent
from grimbots.payments import CODE_KIND, CODE_NOT_SENT
from grimbots.queues import ALL_QUEUES, get_queue
from grimbots.services import Services
from grimbots.statuses import PAID_STATUSES, OutboxStatus, PaymentStatus

# Kinds of update that get one sendMessage reply; a buy callback gets answerCallbackQuery.
MESSAGE_KINDS = {"start", "text"}
# How often the audit looks at the backlog while the workers drain it.
DRAIN_POLL_SECONDS = 2.0


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        width = max(len(k) for k in self.counts) if self.counts else 10
        lines = [f"  {name:<{width}}  {value}" for name, value in self.counts.items()]
        lines.append("audit: " + ("OK, 0 lost, 0 duplicated" if self.ok else "FAILED"))
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def read_sent(lines: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines if line.strip()]


def backlog(services: Services) -> dict[str, int]:
    """Jobs still queued, running or scheduled, and rows still waiting to be worked."""
    raw = services.redis.raw
    left: dict[str, int] = {}
    for name in ALL_QUEUES:
        queue = get_queue(name, raw)
        left[f"{name} queued"] = queue.count
        left[f"{name} running"] = StartedJobRegistry(queue=queue).count
        left[f"{name} scheduled"] = ScheduledJobRegistry(queue=queue).count
        # Dequeued but not started: normally for microseconds; longer if its worker died.
        left[f"{name} dequeued"] = len(queue.intermediate_queue.get_job_ids())
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


def audit(services: Services, sent: list[dict[str, Any]], drain_timeout: float) -> Report:
    report = Report()
    left = wait_until_drained(services, drain_timeout)
    if left:
        report.problems.append(f"queues not drained after {drain_timeout:.0f}s: {left}")

    answered = [s for s in sent if s["status"] == 200]
    accepted = {(s["bot"], s["update_id"]): s for s in answered}
    all_sent = {(s["bot"], s["update_id"]) for s in sent}
    bots = {bot for bot, _ in all_sent}
    low = min((u for _, u in all_sent), default=0)
    high = max((u for _, u in all_sent), default=-1)

    with services.db.session() as session:
        processed = Counter(
            session.execute(
                select(InboundUpdate.bot_id, InboundUpdate.update_id).where(
                    InboundUpdate.bot_id.in_(bots),
                    InboundUpdate.update_id.between(low, high),
                )
            ).tuples()
        )
        outbox = (
            session.execute(
                select(
                    OutboxMessage.idempotency_key,
                    OutboxMessage.chat_id,
                    OutboxMessage.method,
                    OutboxMessage.status,
                ).where(OutboxMessage.bot_id.in_(bots))
            )
            .tuples()
            .all()
        )

    # Outbox keys are tg:<bot>:<chat>:<update>:<kind> (grimbots.outbox.idempotency_key).
    replies: dict[tuple[int, int], list[tuple[str, str]]] = defaultdict(list)
    sent_per_chat: Counter[int] = Counter()
    interrupted_per_chat: Counter[int] = Counter()
    # Payment messages (PIX code, access link: keys pix:...) count per chat too.
    for key, chat_id, method, status in outbox:
        if method == "sendMessage" and status == "sent":
            sent_per_chat[chat_id] += 1
        elif method == "sendMessage" and status == "sending":
            interrupted_per_chat[chat_id] += 1
        if not key.startswith("tg:"):
            continue
        _, bot, _chat, update, _kind = key.split(":", 4)
        bot_update = (int(bot), int(update))
        if bot_update in accepted:
            replies[bot_update].append((method, status))

    # Only calls the stand-in answered 200 delivered something (a 429 or 500 did not).
    calls = [c for c in stand_in_calls(services) if c.get("status") == 200]
    chats = {s["chat"] for s in answered}
    if chats and not any(
        c.get("chat_id") is not None and int(c["chat_id"]) in chats for c in calls
    ):
        # The stand-ins keep their records in memory: a restart (a `make lab` that changed
        # the app) forgets the run, and every check below would report it all as lost.
        report.problems.append(
            "the Telegram stand-in has no call for any chat of this run: was it restarted "
            "since the load test? Its records live in memory; audit a run before `make lab`."
        )
    calls_per_chat = Counter(
        int(c["chat_id"])
        for c in calls
        if c.get("method") == "sendMessage"
        and c.get("chat_id") is not None
        and int(c["chat_id"]) in chats
    )
    callback_answers = Counter(
        str(c["params"].get("callback_query_id"))
        for c in calls
        if c.get("method") == "answerCallbackQuery"
    )

    lost = sorted(k for k in accepted if processed[k] == 0)
    twice = sorted(k for k, n in processed.items() if n > 1)
    phantom = sorted(k for k in processed if k not in all_sent)
    no_reply, many_replies, unsent = [], [], []
    for key, s in accepted.items():
        methods = [m for m, _ in replies.get(key, [])]
        want = "sendMessage" if s["kind"] in MESSAGE_KINDS else "answerCallbackQuery"
        n = methods.count(want)
        if n == 0:
            no_reply.append(key)
        elif n > 1:
            many_replies.append(key)
        if any(status not in ("sent", "sending") for _, status in replies.get(key, [])):
            unsent.append(key)
    # Per chat the stand-in must hold every `sent` row and every interrupted one: fewer
    # calls means a message was lost, more means one was duplicated.
    chat_mismatch = sorted(
        (chat, sent_per_chat[chat], interrupted_per_chat[chat], calls_per_chat[chat])
        for chat in chats
        if calls_per_chat[chat] != sent_per_chat[chat] + interrupted_per_chat[chat]
    )
    interrupted = sum(interrupted_per_chat[chat] for chat in chats)
    interrupted_arrived = sum(
        min(max(calls_per_chat[chat] - sent_per_chat[chat], 0), interrupted_per_chat[chat])
        for chat in chats
    )
    callbacks = [s for s in accepted.values() if s["kind"] == "buy"]
    callback_wrong = sorted(
        s["update_id"] for s in callbacks if callback_answers[str(s["update_id"])] != 1
    )

    report.counts = {
        "updates sent (requests)": len(sent),
        "of which retries": sum(1 for s in sent if s.get("retry")),
        "answered 200": len(answered),
        "answered non-200": len(sent) - len(answered),
        "unique updates accepted": len(accepted),
        "duplicates answered 200 (not re-processed)": len(answered) - len(accepted),
        "updates processed (db rows)": sum(processed.values()),
        "replies sent (stand-in sendMessage)": sum(calls_per_chat.values()),
        "callback answers (stand-in)": sum(
            callback_answers[str(s["update_id"])] for s in callbacks
        ),
        "lost (accepted, never processed)": len(lost),
        "processed twice": len(twice),
        "updates without their reply": len(no_reply),
        "updates with more than one reply": len(many_replies),
        "messages interrupted by a killed worker": interrupted,
        "of which reached the stand-in": interrupted_arrived,
        "chats whose message count differs at the stand-in": len(chat_mismatch),
    }
    for label, items in (
        ("accepted but never processed", lost),
        ("processed twice", twice),
        ("processed but never sent by the generator", phantom),
        ("no reply in the outbox", no_reply),
        ("more than one reply in the outbox", many_replies),
        ("outbox rows not in status sent", unsent),
        ("chat (outbox sent, interrupted, stand-in received) differ", chat_mismatch),
        ("callback queries not answered exactly once", callback_wrong),
    ):
        if items:
            report.problems.append(f"{label}: {len(items)}, e.g. {items[:20]}")
    if services.pix is not None:
        audit_payments(services, bots, chats, calls, report)
    return report


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
    charges = _get(f"{psp}/_sandbox/charges", "charges")
    notifications = _get(f"{psp}/_sandbox/notifications", "notifications")
    with services.db.session() as session:
        rows = session.execute(
            select(
                Payment.id,
                Payment.txid,
                Payment.status,
                Payment.amount_cents,
                Payment.pix_copy_paste.is_not(None),
            )
            .join(Lead, Lead.id == Payment.lead_id)
            .where(Payment.bot_id.in_(bots), Lead.telegram_user_id.in_(chats))
        ).all()
        all_txids = set(session.scalars(select(Payment.txid)))
        two_pending = session.execute(
            select(Payment.lead_id, Payment.offer_id, func.count())
            .where(Payment.status == PaymentStatus.PENDING)
            .group_by(Payment.lead_id, Payment.offer_id)
            .having(func.count() > 1)
        ).all()
        events = session.execute(
            select(
                PaymentEvent.event_key,
                PaymentEvent.payment_id,
                PaymentEvent.outcome,
                PaymentEvent.txid,
            )
        ).all()
        deliveries = session.execute(
            select(Delivery.id, Delivery.payment_id, Delivery.access_token, OutboxMessage.status)
            .outerjoin(OutboxMessage, OutboxMessage.id == Delivery.outbox_message_id)
            .join(Payment, Payment.id == Delivery.payment_id)
            .join(Lead, Lead.id == Payment.lead_id)
            .where(Payment.bot_id.in_(bots), Lead.telegram_user_id.in_(chats))
        ).all()
        codes_dropped = session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(
                OutboxMessage.kind == CODE_KIND,
                OutboxMessage.status == OutboxStatus.FAILED,
                OutboxMessage.error.startswith(CODE_NOT_SENT),
                OutboxMessage.bot_id.in_(bots),
                OutboxMessage.chat_id.in_(chats),
            )
        )
        resends = Counter(
            int(key.split(":")[2])
            for key in session.scalars(
                select(OutboxMessage.idempotency_key).where(
                    OutboxMessage.idempotency_key.like("pix:resend:%"),
                    OutboxMessage.status == OutboxStatus.SENT,
                )
            )
        )

    paid = {r.id: r for r in rows if r.status in PAID_STATUSES}
    psp_txids = Counter(c["txid"] for c in charges)
    foreign_charges = sorted(t for t in psp_txids if t not in all_txids)
    ours = {r.txid for r in rows}
    missing_charges = sorted(str(r.id) for r in rows if r[4] and r.txid not in psp_txids)

    recorded_keys = {e.event_key for e in events}
    notified = [n for n in notifications if n.get("status") == 200]
    # Checked over the stand-in's whole memory (earlier runs too); counted for this run.
    lost_notices = sorted({key for n in notified for key in n["end_to_end_ids"]} - recorded_keys)
    this_run = [n for n in notifications if ours.intersection(n.get("txids") or ())]

    winners = Counter(e.payment_id for e in events if e.outcome in ("confirmed", "late"))
    revenue_wrong = sorted(str(p) for p in paid if winners[p] != 1)
    scoped = {r.id for r in rows}
    won_unpaid = sorted(str(p) for p in winners if p in scoped and p not in paid)

    deliveries_per_payment = Counter(d.payment_id for d in deliveries)
    undelivered = sorted(str(p) for p in paid if deliveries_per_payment[p] != 1)
    delivered_unpaid = sorted(str(d.payment_id) for d in deliveries if d.payment_id not in paid)
    texts = [c.get("text") or "" for c in calls if c.get("method") == "sendMessage"]
    wrong_messages = []
    for d in deliveries:
        expected = (1 if d.status in ("sent", "sending") else 0) + resends[d.id]
        received = sum(1 for text in texts if f"access={d.access_token}" in text)
        # `sending`: killed mid-call, so it is delivered only if the call arrived.
        if d.status not in ("sent", "sending") or received != expected:
            wrong_messages.append((str(d.payment_id), d.status, expected, received))

    unsettled = paid_at_psp_pending_here(services)
    report.counts.update(
        {
            "charges (payments)": len(rows),
            "charges at the PSP stand-in (ours)": sum(1 for t in psp_txids if t in ours),
            "payments confirmed (paid + paid_late)": len(paid),
            "revenue counted (cents)": sum(r.amount_cents for r in paid.values()),
            "PIX codes not sent (charge settled first)": codes_dropped,
            "PSP callbacks sent (answered 200)": sum(n.get("status") == 200 for n in this_run),
            "PSP callbacks refused (non-200)": sum(n.get("status") != 200 for n in this_run),
            "payment events recorded": sum(1 for e in events if e.txid in ours),
            "deliveries": len(deliveries),
            "delivery messages at the stand-in": sum(
                sum(1 for text in texts if f"access={d.access_token}" in text) for d in deliveries
            ),
        }
    )
    for label, items in (
        ("lead+offer with more than one pending charge", [tuple(t) for t in two_pending]),
        ("charges at the PSP that are none of our payments", foreign_charges),
        ("payments with a PIX code but no charge at the PSP", missing_charges),
        ("PSP callbacks answered 200 but not recorded", lost_notices),
        ("charges paid at the PSP whose payment is still pending", unsettled),
        ("paid payments not won by exactly one event (revenue)", revenue_wrong),
        ("payments won by an event but not paid", won_unpaid),
        ("paid payments without exactly one delivery", undelivered),
        ("deliveries for unpaid payments", delivered_unpaid),
        (
            "deliveries (payment, status, expected, received) not at the stand-in once",
            wrong_messages,
        ),
    ):
        if items:
            report.problems.append(f"{label}: {len(items)}, e.g. {items[:20]}")
