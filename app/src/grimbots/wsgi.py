"""WSGI entry point for gunicorn: `gunicorn -c python:grimbots.gunicorn_conf grimbots.wsgi:app`."""

from __future__ import annotations

from grimbots.logs import configure_logging
from grimbots.settings import load_settings_or_exit
from grimbots.web import create_wsgi_app

settings = load_settings_or_exit()
configure_logging(settings.log_level)
app = create_wsgi_app(settings)
