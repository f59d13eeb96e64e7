"""WSGI entry point for gunicorn: `gunicorn -c python:grimbots.gunicorn_conf grimbots.wsgi:app`."""

from __future__ import annotations

from grimbots.logs import configure_logging
from grimbots.settings import load_settings_or_exit
from grimbots.web import create_app, ingest_of
from grimbots.web.fast_webhook import FastWebhook

settings = load_settings_or_exit()
configure_logging(settings.log_level)
flask_app = create_app(settings)
app = FastWebhook(flask_app, ingest_of(flask_app), settings.ops_port)
