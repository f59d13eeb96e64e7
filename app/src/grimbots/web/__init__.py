"""The application factories: `create_app` builds the Flask app (one blueprint per
surface), `create_wsgi_app` the WSGI app gunicorn serves (grimbots.wsgi) and the tests use:
Telegram's webhook answered in front of Flask (grimbots.web.fast_webhook), the rest by Flask."""

from __future__ import annotations

import time

from flask import Flask, g, request

from grimbots import metrics
from grimbots.bot_secrets import BotSecretCache, database_loader
from grimbots.health import RecentCheck
from grimbots.pix_ingest import PixIngest
from grimbots.services import init_services
from grimbots.settings import Settings
from grimbots.telegram_ingest import MAX_BODY_BYTES, TelegramIngest
from grimbots.web.admin import admin
from grimbots.web.extension import EXTENSION, ingest_of, pix_ingest_of, services_of
from grimbots.web.fast_webhook import FastWebhook
from grimbots.web.health import health
from grimbots.web.pix_webhook import pix_webhook
from grimbots.web.prometheus import metrics_bp

__all__ = ["create_app", "create_wsgi_app", "ingest_of", "pix_ingest_of", "services_of"]


def create_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    # Flask refuses bigger bodies with 413 itself; the webhook also checks before reading.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    services = init_services(settings)
    ingest = TelegramIngest(settings, BotSecretCache(database_loader(services.db)))
    app.extensions[EXTENSION] = {
        "services": services,
        "ingest": ingest,
        "pix_ingest": PixIngest(services),
        "health": RecentCheck(services),
    }

    app.register_blueprint(pix_webhook)
    app.register_blueprint(health)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(admin)

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _record(response):
        # Label by URL rule, not path, so bot ids do not explode the series count.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        started = g.get("started")
        seconds = time.perf_counter() - started if started is not None else None
        metrics.observe_http(route, response.status_code, seconds)
        return response

    return app


def create_wsgi_app(settings: Settings) -> FastWebhook:
    """The app as served: its Flask app is `.flask_app`."""
    flask_app = create_app(settings)
    return FastWebhook(flask_app, ingest_of(flask_app), settings.ops_port)
