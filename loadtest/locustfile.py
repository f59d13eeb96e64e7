"""The seed's load mix against GrimBots' front door, plus what real traffic adds.

Each simulated user is one Telegram user chatting with one bot (picked at random from the
bots the lab seeded). Weights: /health 10, /start 50, free text 30, "buy" callbacks 20, and
PSP paid notifications 10: the PSP stand-in is asked to pay a charge the app created (one
that is still open) and calls the app's PIX webhook like a PSP would; the request returns
once the app answered that callback, so its time and status are the callback's.
Every update carries a fresh update_id, except in the retry stage (LOADTEST_RETRY_SHARE > 0),
where that share of requests re-sends an earlier update byte for byte, the way Telegram
retries, and that share of payments has its notification delivered twice, the way PSPs
retry. Every update sent is logged (LOADTEST_SENT_LOG, one JSON line each) so the audit
can reconcile what was sent with what the system did.

Environment:
  LOADTEST_BOTS         JSON file: [{"id": 1, "secret": "...", "offers": [1, 2]}, ...]
  LOADTEST_SENT_LOG     where to append the sent-updates log (JSON lines)
  LOADTEST_RETRY_SHARE  0..1, share of requests that re-send an earlier update (default 0)
  LOADTEST_USER_RATE    requests/s per user for a fixed offered rate; unset: the seed's
                        think time of 1-3 s between requests
  LOADTEST_PSP          the PSP stand-in's base URL (http://127.0.0.1:8082); unset: no payments
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
import urllib.request

from locust import between, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser

with open(os.environ["LOADTEST_BOTS"]) as _bots_file:
    BOTS = json.load(_bots_file)
BOTS_BY_ID = {bot["id"]: bot for bot in BOTS}
RETRY_SHARE = float(os.environ.get("LOADTEST_RETRY_SHARE", "0"))
USER_RATE = os.environ.get("LOADTEST_USER_RATE")
FREE_TEXT = ("Oi", "Quanto custa?", "Quero comprar", "Como funciona?", "Tem desconto?")
PSP = os.environ.get("LOADTEST_PSP", "").rstrip("/")

# Microseconds since the epoch as the first id: ids stay unique across runs and stages
# (each run starts past every id an earlier run could have used at these rates).
_update_ids = itertools.count(time.time_ns() // 1000)
_user_ids = itertools.count(time.time_ns() // 1000)
_sent_lock = threading.Lock()
_sent_log = open(os.environ.get("LOADTEST_SENT_LOG", os.devnull), "a", buffering=1)  # noqa: SIM115
# (bot_id, update_id, chat_id, kind, body) of sent updates, for the retry stage
_recent: list[tuple[int, int, int, str, bytes]] = []


class OpenCharges:
    """Charges the app created that are still open at the PSP stand-in, each handed out once.

    Refilled from GET /_sandbox/charges?status=ATIVA at most once a second, outside the
    load statistics (it is the test's bookkeeping, not traffic the app sees).
    """

    def __init__(self) -> None:
        self.ready: list[str] = []
        self.taken: set[str] = set()
        self.fetched_at = 0.0
        self.lock = threading.Lock()

    def take(self) -> str | None:
        with self.lock:
            if not self.ready and time.monotonic() - self.fetched_at > 1.0:
                self.fetched_at = time.monotonic()
                with urllib.request.urlopen(
                    f"{PSP}/_sandbox/charges?status=ATIVA", timeout=10
                ) as r:
                    charges = json.load(r)["charges"]
                fresh = [c["txid"] for c in charges if c["txid"] not in self.taken]
                random.shuffle(fresh)
                self.ready = fresh
            if not self.ready:
                return None
            txid = self.ready.pop()
            self.taken.add(txid)
            return txid


_open_charges = OpenCharges()


def record(bot_id: int, update_id: int, chat_id: int, kind: str, status: int, retry: bool) -> None:
    line = json.dumps(
        {
            "bot": bot_id,
            "update_id": update_id,
            "chat": chat_id,
            "kind": kind,
            "status": status,
            "retry": retry,
            # When the answer came (wall clock): a test measures a failover's gap with it.
            "at": round(time.time(), 3),
        }
    )
    with _sent_lock:
        _sent_log.write(line + "\n")


class TelegramUser(FastHttpUser):
    wait_time = constant_throughput(float(USER_RATE)) if USER_RATE else between(1, 3)

    def on_start(self) -> None:
        self.bot = random.choice(BOTS)
        self.user_id = next(_user_ids)
        self.first_name = f"Load {self.user_id % 100000}"

    # ---- the seed's mix -------------------------------------------------------------
    @task(10)
    def health(self) -> None:
        self.client.get("/health", name="/health")

    @task(50)
    def start_command(self) -> None:
        self.send_message("/start", "start")

    @task(30)
    def free_text(self) -> None:
        self.send_message(random.choice(FREE_TEXT), "text")

    @task(20)
    def buy(self) -> None:
        offers = self.bot.get("offers") or [0]
        update_id = next(_update_ids)
        update = {
            "update_id": update_id,
            "callback_query": {
                "id": str(update_id),
                "from": self.sender(),
                "message": {"message_id": 1, "chat": self.chat(), "date": int(time.time())},
                "chat_instance": str(self.user_id),
                "data": f"buy:{random.choice(offers)}",
            },
        }
        self.post_update(update_id, update, "buy")

    @task(10)
    def pay(self) -> None:
        txid = _open_charges.take() if PSP else None
        if txid is None:
            self.buy()  # nothing to pay yet: buy first, so every turn sends a request
            return
        retry = bool(RETRY_SHARE) and random.random() < RETRY_SHARE
        spec = {"txid": txid, "wait": True, "times": 2 if retry else 1}
        with self.client.post(
            f"{PSP}/_sandbox/pay",
            json=spec,
            name="PSP paid notification" + (" retry" if retry else ""),
            catch_response=True,
        ) as response:
            results = (
                (response.json() or {}).get("results") if response.status_code == 200 else None
            )
            if response.status_code == 409:
                response.success()  # the charge expired meanwhile: nothing was paid
            elif not results or any(status != 200 for status in results):
                response.failure(f"PSP callback answers {results} (HTTP {response.status_code})")

    # ---- helpers -------------------------------------------------------------------
    def sender(self) -> dict:
        return {"id": self.user_id, "is_bot": False, "first_name": self.first_name}

    def chat(self) -> dict:
        return {"id": self.user_id, "type": "private", "first_name": self.first_name}

    def send_message(self, text: str, kind: str) -> None:
        if RETRY_SHARE and _recent and random.random() < RETRY_SHARE:
            self.resend()
            return
        update_id = next(_update_ids)
        update = {
            "update_id": update_id,
            "message": {
                "message_id": update_id % 2_000_000_000,
                "from": self.sender(),
                "chat": self.chat(),
                "date": int(time.time()),
                "text": text,
            },
        }
        self.post_update(update_id, update, kind)

    def post_update(self, update_id: int, update: dict, kind: str) -> None:
        body = json.dumps(update, separators=(",", ":")).encode()
        status = self.post(self.bot, body, kind)
        record(self.bot["id"], update_id, self.user_id, kind, status, retry=False)
        if status == 200:
            with _sent_lock:
                _recent.append((self.bot["id"], update_id, self.user_id, kind, body))
                if len(_recent) > 5000:
                    del _recent[:1000]

    def resend(self) -> None:
        with _sent_lock:
            bot_id, update_id, chat_id, kind, body = random.choice(_recent)
        status = self.post(BOTS_BY_ID[bot_id], body, "retry")
        record(bot_id, update_id, chat_id, kind, status, retry=True)

    def post(self, bot: dict, body: bytes, label: str) -> int:
        with self.client.post(
            f"/webhook/telegram/{bot['id']}",
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-Telegram-Bot-Api-Secret-Token": bot["secret"],
            },
            name=f"/webhook/telegram/[bot] {label}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            return response.status_code


# Once every user has stopped, its last request answered and logged. Not on `quitting`: a
# SIGTERM (loadtest/run.py's wrap-up) fires that before the users stop, and the answers of
# the requests still in flight would miss the log (the audit calls them phantoms).
@events.test_stop.add_listener
def close_log(environment, **_kwargs) -> None:
    _sent_log.close()
