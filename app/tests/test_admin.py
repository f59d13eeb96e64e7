"""The admin API: Bearer token required, never returns tokens or secrets."""

from __future__ import annotations

from grimbots.lab.servers import ADMIN_TOKEN
from grimbots.web import create_wsgi_app
from werkzeug.test import Client


def test_requires_bearer_token(settings, bot):
    client = Client(create_wsgi_app(settings))
    assert client.get("/admin/bots").status_code == 401
    assert client.get("/admin/bots", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/admin/bots", headers={"Authorization": ADMIN_TOKEN}).status_code == 401


def test_lists_bots_without_tokens(settings, bot):
    response = Client(create_wsgi_app(settings)).get(
        "/admin/bots", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert bot.token not in body and bot.secret not in body
    (listed,) = response.json["bots"]
    assert (listed["id"], listed["offers"]) == (bot.id, 1)
