"""A thin WSGI layer that answers Telegram's webhook without entering Flask.

Measured on the 2-core box (docs/benchmarks.md): Flask's request setup (request context,
URL matching, hooks, Response object) costs more CPU than everything else the webhook does
per request, so the webhook route is served here and every other path goes to Flask.
Same logic (grimbots.ingest), same status codes, same metrics; the Flask blueprint stays
registered for anyone using the Flask app alone (tests exercise both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from grimbots.ingest import JSON_HEADERS, Answer, TelegramIngest, timed

PREFIX = "/webhook/telegram/"
ROUTE_LABEL = "/webhook/telegram/<int:bot_id>"  # same label as the Flask rule
REASONS = {
    200: "200 OK",
    400: "400 Bad Request",
    403: "403 Forbidden",
    404: "404 Not Found",
    413: "413 Payload Too Large",
    503: "503 Service Unavailable",
}
METHOD_NOT_ALLOWED = Answer(405, b'{"ok":false,"error":"method not allowed"}')


class FastWebhook:
    def __init__(self, flask_app: Callable, ingest: TelegramIngest):
        self.flask_app = flask_app
        self.ingest = ingest

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        bot_part = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        # Same matching as Flask's <int:bot_id>: ASCII digits only, no sign, no slash.
        if not (bot_part.isascii() and bot_part.isdigit()):
            return self.flask_app(environ, start_response)

        if environ.get("REQUEST_METHOD") != "POST":
            answer = timed(ROUTE_LABEL, lambda: METHOD_NOT_ALLOWED)
            start_response("405 Method Not Allowed", [*JSON_HEADERS, ("Allow", "POST")])
            return [answer.body]

        stream = environ["wsgi.input"]
        answer = timed(
            ROUTE_LABEL,
            lambda: self.ingest.handle(
                int(bot_part),
                environ.get("HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN"),
                environ.get("CONTENT_LENGTH"),
                stream.read,
            ),
        )
        start_response(
            REASONS.get(answer.status, str(answer.status)),
            [*JSON_HEADERS, ("Content-Length", str(len(answer.body)))],
        )
        return [answer.body]
