"""The Telegram stand-in: Bot API shapes, call filters, faults."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx


def test_bot_api_shapes_and_filters(telegram):
    base = f"{telegram.url}/bot42:secret"
    sent = httpx.post(f"{base}/sendMessage", json={"chat_id": 7, "text": "hi"}).json()
    assert sent["ok"] and sent["result"]["chat"]["id"] == 7 and sent["result"]["message_id"]
    assert httpx.get(f"{base}/getMe").json()["result"]["id"] == 42
    assert httpx.post(f"{base}/deleteWebhook").json() == {"ok": True, "result": True}
    assert httpx.post(f"{base}/nope").status_code == 404
    assert [c["method"] for c in telegram.calls()] == ["sendMessage", "getMe", "deleteWebhook"]
    assert len(telegram.calls("sendMessage", chat_id=7)) == 1
    assert telegram.calls("sendMessage", chat_id=8) == []


def test_faults(telegram):
    base = f"{telegram.url}/bot42:secret/sendMessage"
    telegram.faults(
        status_429={"count": 1, "retry_after": 3}, status_500={"count": 1}, blocked_chat_ids=[9]
    )
    first = httpx.post(base, json={"chat_id": 1, "text": "a"})
    assert first.status_code == 429 and first.json()["parameters"]["retry_after"] == 3
    assert httpx.post(base, json={"chat_id": 1, "text": "a"}).status_code == 500
    assert httpx.post(base, json={"chat_id": 9, "text": "a"}).status_code == 403
    assert httpx.post(base, json={"chat_id": 1, "text": "a"}).status_code == 200


def test_keeps_up_with_a_few_hundred_calls(telegram):
    def send(i):
        with httpx.Client() as client:
            for n in range(25):
                client.post(f"{telegram.url}/bot1:s/sendMessage", json={"chat_id": i, "text": n})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(8)))
    assert len(telegram.calls("sendMessage")) == 200
