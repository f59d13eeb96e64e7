"""POST /webhook/telegram/<bot_id>: Telegram's calls (logic in grimbots.telegram_ingest)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from grimbots.web.extension import ingest_of

telegram_webhook = Blueprint("telegram_webhook", __name__)

ROUTE = "/webhook/telegram/<int:bot_id>"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


@telegram_webhook.post(ROUTE)
def receive(bot_id: int) -> Response:
    answer = ingest_of(current_app).handle(
        bot_id,
        request.headers.get(SECRET_HEADER),
        request.headers.get("Content-Length"),
        # Lazy: touching request.stream makes Werkzeug enforce MAX_CONTENT_LENGTH, and the
        # secret must be checked first.
        lambda size: request.stream.read(size),
    )
    return Response(answer.body, status=answer.status, mimetype="application/json")
