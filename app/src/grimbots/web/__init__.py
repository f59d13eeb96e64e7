"""The Flask application factory: one blueprint per surface."""

from __future__ import annotations

import time

from flask import Flask, g, request

from grimbots import metrics
from grimbots.bot_secrets import BotSecretCache, database_loader
from grimbots.ingest import MAX_BODY_BYTES, TelegramIngest
from grimbots.pix_ingest import PixIngest
from grimbots.services import Services, init_services
from grimbots.settings import Settings

EXTENSION = "grimbots"


def services_of(app: Flask) -> Services:
    return app.extensions[EXTENSION]["services"]


def ingest_of(app: Flask) -> TelegramIngest:
    return app.extensions[EXTENSION]["ingest"]


def pix_ingest_of(app: Flask) -> PixIngest:
    return app.extensions[EXTENSION]["pix_ingest"]


def create_app(settings: Settings) -> Flask:
    from grimbots.web.admin import admin
    from grimbots.web.health import health
    from grimbots.web.pix_webhook import pix_webhook
    from grimbots.web.prometheus import metrics_bp
    from grimbots.web.telegram_webhook import telegram_webhook

    app = Flask(__name__)
    # Flask refuses bigger bodies with 413 itself; the webhook also checks before reading.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    services = init_services(settings)
    ingest = TelegramIngest(settings, BotSecretCache(database_loader(services.db)))
    app.extensions[EXTENSION] = {
        "services": services,
        "ingest": ingest,
        "pix_ingest": PixIngest(services),
    }

    app.register_blueprint(telegram_webhook)
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
        if started is not None:
            metrics.HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)
        metrics.HTTP_REQUESTS.labels(route, str(response.status_code)).inc()
        return response

    return app
