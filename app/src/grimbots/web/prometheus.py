"""GET /metrics: Prometheus exposition, summed over all processes (see grimbots.metrics)."""

from __future__ import annotations

from flask import Blueprint, Response

from grimbots import metrics

metrics_bp = Blueprint("metrics", __name__)


@metrics_bp.get("/metrics")
def get_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
