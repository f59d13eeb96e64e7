"""POST /webhook/pix/<provider>: the PSP's callbacks (logic in grimbots.pix_ingest).

API Pix posts callbacks to the registered webhook URL plus "/pix": registered as
/webhook/pix/<provider>, they arrive at /webhook/pix/<provider>/pix. Both paths are served.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from grimbots.web.extension import pix_ingest_of

pix_webhook = Blueprint("pix_webhook", __name__)

ROUTE = "/webhook/pix/<provider>"
SPEC_ROUTE = ROUTE + "/pix"


@pix_webhook.post(ROUTE)
@pix_webhook.post(SPEC_ROUTE)
def receive(provider: str) -> Response:
    answer = pix_ingest_of(current_app).handle(
        provider,
        request.headers,
        request.headers.get("Content-Length"),
        # Lazy, as for Telegram: our own size check runs before Werkzeug reads anything.
        lambda size: request.stream.read(size),
        client=request.remote_addr,
    )
    return Response(answer.body, status=answer.status, mimetype="application/json")
