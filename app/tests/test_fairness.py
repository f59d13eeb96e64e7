"""One bot cannot starve the others: a flood is held to its admission limit at the door,
and another bot's replies keep their latency (issue 12)."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from grimbots.lab.servers import wait_until
from grimbots.models import Bot
from grimbots.queues import TASKS
from support import post_update, start_message

LIMIT = 20  # updates per bot and second, for this test
FLOOD = 600


def second_bot(services) -> tuple[int, str]:
    secret = secrets.token_urlsafe(24)
    with services.db.session() as session:
        row = Bot(name="quiet-bot", token="1999999999:quiet-bot-token", webhook_secret=secret)
        session.add(row)
        session.flush()
        return row.id, secret


def test_a_flooding_bot_does_not_delay_another_bots_replies(
    bot, services, telegram, start_web, start_worker
):
    base_url = start_web(workers=2, extra_env={"GRIMBOTS_BOT_ADMISSION_PER_SECOND": str(LIMIT)})
    start_worker(TASKS)
    start_worker(TASKS)
    quiet_id, quiet_secret = second_bot(services)
    statuses: list[int] = []
    flood_done = threading.Event()

    def flood() -> None:
        with httpx.Client(timeout=10) as client, ThreadPoolExecutor(8) as pool:
            statuses.extend(
                pool.map(
                    lambda i: (
                        post_update(
                            base_url,
                            bot.id,
                            bot.secret,
                            start_message(10_000 + i, 70_000 + i),
                            client,
                        ).status_code
                    ),
                    range(FLOOD),
                )
            )
        flood_done.set()

    started = time.monotonic()
    flooder = threading.Thread(target=flood)
    flooder.start()
    latencies = []
    for n in range(5):  # the quiet bot's users, while the flood goes on
        user = 90_000 + n
        sent = time.monotonic()
        assert (
            post_update(base_url, quiet_id, quiet_secret, start_message(n + 1, user)).status_code
            == 200
        )
        wait_until(
            lambda u=user: telegram.calls("sendMessage", chat_id=u), timeout=30, what="reply"
        )
        latencies.append(time.monotonic() - sent)
    flooder.join(60)
    elapsed = time.monotonic() - started

    accepted = statuses.count(200)
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0, set(statuses)
    assert accepted <= LIMIT * (elapsed + 2), (accepted, elapsed)
    # Without the limit the flood's whole backlog would sit ahead of these replies.
    assert max(latencies) < 3.0, latencies
    print(
        f"\nMEASURE flood accepted={accepted}/{FLOOD} in {elapsed:.1f}s, "
        f"other bot's reply latency max={max(latencies):.2f}s"
    )
