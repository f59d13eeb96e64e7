"""A thin WSGI layer that answers Telegram's webhook without entering Flask, and keeps the
operator surfaces (/admin, /metrics) off the public listener.

Measured on the 2-core box (docs/benchmarks.md): Flask's request setup (request context,
URL matching, hooks, Response object) costs more CPU than everything else the webhook does
per request, so the webhook route is served here and every other path goes to Flask.
The one Telegram route: grimbots.telegram_ingest holds its logic, grimbots.web.create_wsgi_app
puts this layer in front of the Flask app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from grimbots.answers import JSON_HEADERS, Answer, timed
from grimbots.telegram_ingest import TelegramIngest

PREFIX = "/webhook/telegram/"
ROUTE_LABEL = "/webhook/telegram/<int:bot_id>"  # the metrics label, as a Flask rule would read
REASONS = {
    200: "200 OK",
    400: "400 Bad Request",
    403: "403 Forbidden",
    404: "404 Not Found",
    413: "413 Payload Too Large",
    429: "429 Too Many Requests",
    503: "503 Service Unavailable",
}
METHOD_NOT_ALLOWED = Answer(405, b'{"ok":false,"error":"method not allowed"}')
NOT_HERE = Answer(404, b'{"ok":false,"error":"not found"}')
# Served on the operator listener only (Settings.ops_port): the admin API, and the metrics,
# which show revenue.
OPERATOR_PATHS = ("/admin", "/metrics")


def listener_port(environ: dict) -> int | None:
    """The local port the connection came in on. Not SERVER_PORT: gunicorn takes that from
    the client's Host header. None outside gunicorn (tests' in-process clients)."""
    sock = environ.get("gunicorn.socket")
    try:
        return sock.getsockname()[1] if sock is not None else None
    except (OSError, IndexError, TypeError):
        return None


class FastWebhook:
    def __init__(self, flask_app: Callable, ingest: TelegramIngest, ops_port: int | None = None):
        self.flask_app = flask_app
        self.ingest = ingest
        self.ops_port = ops_port

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if (
            self.ops_port is not None
            and path.startswith(OPERATOR_PATHS)
            and listener_port(environ) != self.ops_port
        ):
            start_response(
                "404 Not Found", [*JSON_HEADERS, ("Content-Length", str(len(NOT_HERE.body)))]
            )
            return [NOT_HERE.body]
        bot_part = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        # Matched as Flask's <int:bot_id> would: ASCII digits only, no sign, no slash. More
        # than 10 digits is no bot id (ingest refuses ids past 2^31 - 1 anyway), and int()
        # of thousands of digits is slow enough to be an attack in itself.
        if not (bot_part.isascii() and bot_part.isdigit()):
            return self.flask_app(environ, start_response)
        if len(bot_part) > 10:
            bot_part = "0"  # a bot id that cannot exist: 404 like any unknown one

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
        headers = [*JSON_HEADERS, ("Content-Length", str(len(answer.body)))]
        if answer.status == 429:
            headers.append(("Retry-After", "1"))
        start_response(REASONS.get(answer.status, str(answer.status)), headers)
        return [answer.body]
