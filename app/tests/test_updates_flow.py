"""End to end with real processes: webhook -> Redis -> `grimbots worker` -> Telegram stand-in."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from grimbots.jobs.gateway import charge_job_id
from grimbots.lab.servers import wait_until
from grimbots.models import InboundUpdate, Lead, OutboxMessage
from grimbots.queues import GATEWAY, PROCESS_UPDATE, TASKS, update_job_id
from rq import Queue
from support import buy_callback, count, post_update, start_message


def test_start_sends_welcome_with_offer_buttons(webhook, bot, telegram, start_worker, services):
    start_worker(TASKS)
    assert webhook(start_message(100, user_id=555)) == 200
    (call,) = wait_until(lambda: telegram.calls("sendMessage", chat_id=555), what="welcome")
    assert call["bot_id"] == bot.token_id
    assert call["text"] == "Welcome to the shop!"
    keyboard = call["params"]["reply_markup"]["inline_keyboard"]
    assert keyboard == [[{"text": "Gold - R$ 19,90", "callback_data": f"buy:{bot.offer_id}"}]]
    wait_until(lambda: count(services, OutboxMessage, status="sent") == 1, what="outbox sent")
    assert count(services, Lead, bot_id=bot.id, telegram_user_id=555) == 1
    assert count(services, InboundUpdate, bot_id=bot.id, update_id=100) == 1


def test_plain_text_points_back_to_offers(webhook, telegram, start_worker):
    start_worker(TASKS)
    assert webhook(start_message(101, user_id=556, text="how much?")) == 200
    (call,) = wait_until(lambda: telegram.calls("sendMessage", chat_id=556), what="reply")
    assert "/start" in call["text"]


def test_buy_answers_callback_and_queues_the_charge(
    webhook, bot, telegram, start_worker, redis_client
):
    start_worker(TASKS)  # nobody works `gateway`, so the charge job stays visible there
    assert webhook(buy_callback(102, user_id=557, offer_id=bot.offer_id)) == 200
    (call,) = wait_until(lambda: telegram.calls("answerCallbackQuery"), what="callback answer")
    assert call["params"]["callback_query_id"] == "cb-102"
    gateway = Queue(GATEWAY, connection=redis_client)
    wait_until(lambda: gateway.job_ids == [charge_job_id(bot.id, 102)], what="charge job")
    job = gateway.fetch_job(charge_job_id(bot.id, 102))
    assert job.func_name == "grimbots.jobs.gateway.create_charge"
    assert job.args[2] == bot.offer_id


def test_same_update_50_times_concurrently_gives_one_reply(
    env, bot, telegram, start_web, start_worker, services
):
    base_url = start_web(workers=3)
    start_worker(TASKS)
    start_worker(TASKS)
    update = start_message(200, user_id=600)

    def post(_):
        with httpx.Client(timeout=10) as client:  # separate connections: spread over workers
            return post_update(base_url, bot.id, bot.secret, update, client).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(post, range(50)))
    assert statuses == [200] * 50
    wait_until(lambda: count(services, OutboxMessage, status="sent") == 1, what="sent")
    # Give a wrongly duplicated job every chance to show up before counting.
    wait_until(lambda: Queue(TASKS, connection=services.redis.raw).count == 0, what="drained")
    assert len(telegram.calls("sendMessage", chat_id=600)) == 1
    assert count(services, InboundUpdate, bot_id=bot.id, update_id=200) == 1
    assert count(services, OutboxMessage, bot_id=bot.id) == 1


def test_same_job_run_many_times_in_parallel_sends_once(bot, telegram, start_worker, services):
    """Past the door (e.g. dedupe key expired, job re-run by RQ): the outbox still holds."""
    import orjson

    queue = Queue(TASKS, connection=services.redis.raw)
    update_json = orjson.dumps(start_message(300, user_id=700)).decode()
    for copy in range(6):
        queue.enqueue(
            PROCESS_UPDATE,
            bot.id,
            300,
            update_json,
            job_id=f"{update_job_id(bot.id, 300)}-copy{copy}",
        )
    start_worker(TASKS)
    start_worker(TASKS)
    wait_until(
        lambda: queue.count == 0 and len(queue.finished_job_registry) == 6,
        timeout=30,
        what="all copies finished",
    )
    assert len(telegram.calls("sendMessage", chat_id=700)) == 1
    assert count(services, InboundUpdate, bot_id=bot.id, update_id=300) == 1
    assert count(services, OutboxMessage, bot_id=bot.id, status="sent") == 1
