"""GET /metrics: Prometheus exposition, summed over all processes (see grimbots.metrics),
plus the state of the queues, the outbox and the payments read at this scrape
(grimbots.metrics_collector)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from grimbots import metrics
from grimbots.metrics_collector import StateCollector
from grimbots.web.extension import services_of

metrics_bp = Blueprint("metrics", __name__)


@metrics_bp.get("/metrics")
def get_metrics() -> Response:
    body, content_type = metrics.render(StateCollector(services_of(current_app)))
    return Response(body, content_type=content_type)
