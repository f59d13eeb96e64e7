"""GET /health: never rate limited, never slow (see grimbots.health)."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, current_app

from grimbots import health as health_check
from grimbots.web.extension import services_of

health = Blueprint("health", __name__)


@health.get("/health")
def get_health() -> Response:
    status, report = health_check.check(services_of(current_app))
    code = 503 if status == "unhealthy" else 200
    return Response(orjson.dumps(report), status=code, mimetype="application/json")
