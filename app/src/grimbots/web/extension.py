"""Where the app factory keeps the per-app objects, and the accessors the blueprints use.

Apart from grimbots.web (the factory), so that the blueprints the factory imports never
import it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

if TYPE_CHECKING:  # types only: importing these here would make the cycle this avoids
    from grimbots.health import RecentCheck
    from grimbots.pix_ingest import PixIngest
    from grimbots.services import Services
    from grimbots.telegram_ingest import TelegramIngest

EXTENSION = "grimbots"


def services_of(app: Flask) -> Services:
    return app.extensions[EXTENSION]["services"]


def ingest_of(app: Flask) -> TelegramIngest:
    return app.extensions[EXTENSION]["ingest"]


def pix_ingest_of(app: Flask) -> PixIngest:
    return app.extensions[EXTENSION]["pix_ingest"]


def health_of(app: Flask) -> RecentCheck:
    return app.extensions[EXTENSION]["health"]
