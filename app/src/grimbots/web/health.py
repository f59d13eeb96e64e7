"""GET /health: never rate limited, never slow (grimbots.health.RecentCheck)."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, current_app

from grimbots.web.extension import health_of

health = Blueprint("health", __name__)


@health.get("/health")
def get_health() -> Response:
    status, report = health_of(current_app).check()
    code = 503 if status == "unhealthy" else 200
    return Response(orjson.dumps(report), status=code, mimetype="application/json")
