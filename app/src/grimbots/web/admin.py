"""A small admin API (Bearer GRIMBOTS_ADMIN_TOKEN). Never returns bot tokens or secrets."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import func, select

from grimbots.models import Bot, Offer
from grimbots.web.extension import services_of

admin = Blueprint("admin", __name__, url_prefix="/admin")


@admin.before_request
def require_token() -> Response | None:
    expected = services_of(current_app).settings.admin_token
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        response = jsonify({"error": "missing or bad bearer token"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return None


@admin.get("/bots")
def list_bots() -> Response:
    offers = select(func.count(Offer.id)).where(Offer.bot_id == Bot.id).scalar_subquery()
    with services_of(current_app).db.session() as session:
        rows = session.execute(
            select(
                Bot.id, Bot.name, Bot.welcome_text, Bot.created_at, offers.label("offers")
            ).order_by(Bot.id)
        ).all()
    return jsonify(
        {
            "bots": [
                {
                    "id": r.id,
                    "name": r.name,
                    "welcome_text": r.welcome_text,
                    "offers": r.offers,
                    "created_at": r.created_at.isoformat() if r.created_at else None,
                }
                for r in rows
            ]
        }
    )
