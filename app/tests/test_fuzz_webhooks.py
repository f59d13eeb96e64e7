"""Property-based fuzzing of both webhooks through the production WSGI stack (Hypothesis).

The invariant, for every generated path, header set and body: the answer is never a 5xx,
and a refused request (any status but 200) leaves nothing behind: no job queued, no
dedupe key, no row written. A few thousand cases per run (FUZZ_EXAMPLES each).
"""

from __future__ import annotations

import json

import orjson
import pytest
from grimbots.models import InboundUpdate, PaymentEvent
from grimbots.web import create_wsgi_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payment_support import pending_payment, signed
from support import count
from werkzeug.test import Client

FUZZ_EXAMPLES = 1500
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def _dumps(value) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer past 64 bits: as text, as a client may send it
        return json.dumps(value).encode()


# JSON values of every shape, numbers well past 64 bits and odd Unicode included.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
ids = st.integers(min_value=-(2**70), max_value=2**70)
# Bodies: arbitrary bytes, arbitrary JSON, and updates that look almost right.
update_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(_dumps),
    st.fixed_dictionaries(
        {"update_id": ids | json_values},
        optional={"message": json_values, "callback_query": json_values},
    ).map(lambda d: _dumps(d)),
)
# What a header can carry on the wire: Latin-1, no control characters.
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
lengths = st.one_of(
    st.none(), st.sampled_from(["-1", "0", "abc", "99999999999", "1e3", " 7"]), st.just("exact")
)


def _post(client, path: str, body: bytes, headers: dict[str, str], length: str | None):
    overrides = {}
    if length == "exact":
        length = str(len(body))
    if length is not None:
        overrides["CONTENT_LENGTH"] = length
    return client.post(path, data=body, headers=headers, environ_overrides=overrides)


@pytest.fixture
def client(settings):
    return Client(create_wsgi_app(settings))


def traces(services, redis_client) -> tuple[int, ...]:
    return (
        redis_client.llen("rq:queue:tasks"),
        redis_client.llen("rq:queue:webhook"),
        len(redis_client.keys("grimbots:dedupe:*")),
        count(services, InboundUpdate),
        count(services, PaymentEvent),
    )


def test_telegram_webhook_never_fails_and_refusals_leave_no_trace(
    client, bot, services, redis_client
):
    @FUZZ
    @given(
        path_id=st.one_of(
            st.just(str(bot.id)), ids.map(str), st.text(max_size=12), st.just("1" * 400)
        ),
        secret=st.one_of(st.just(bot.secret), st.none(), header_text),
        body=update_bodies,
        length=lengths,
        method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
    )
    def case(path_id, secret, body, length, method):
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers[SECRET_HEADER] = secret
        before = traces(services, redis_client)
        path = f"/webhook/telegram/{path_id}"
        if method == "POST":
            response = _post(client, path, body, headers, length)
        else:
            response = client.open(path, method=method, data=body, headers=headers)
        assert response.status_code < 500, (path, body, response.get_data())
        if response.status_code != 200:
            assert traces(services, redis_client) == before, (path, body, response.status_code)

    case()


def test_pix_webhook_never_fails_and_refusals_leave_no_trace(client, bot, services, redis_client):
    payment = pending_payment(services, bot, 1401)
    entry = st.fixed_dictionaries(
        {},
        optional={
            "endToEndId": st.one_of(st.text(max_size=40), st.just("E" + "1" * 31), json_values),
            "txid": st.one_of(st.just(payment.txid), st.text(max_size=40), json_values),
            "valor": st.one_of(
                st.just("19.90"), st.from_regex(r"\A[0-9.,\-+e]{0,14}\Z"), json_values
            ),
            "horario": st.one_of(
                st.just("2026-12-02T10:00:00Z"),
                st.datetimes().map(lambda d: d.isoformat()),
                st.text(max_size=30),
                json_values,
            ),
        },
    )
    bodies = st.one_of(
        st.binary(max_size=300),
        json_values.map(_dumps),
        st.lists(entry, max_size=4).map(lambda pix: _dumps({"pix": pix})),
    )

    @FUZZ
    @given(
        provider=st.one_of(st.just("apipix"), st.text(max_size=12)),
        body=bodies,
        signature=st.sampled_from(["valid", "valid", "wrong", "missing"]),
        length=lengths,
    )
    def case(provider, body, signature, length):
        headers = signed(body) if signature == "valid" else {"Content-Type": "application/json"}
        if signature == "wrong":
            headers["X-Pix-Signature"] = "sha256=" + "0" * 64
        before = traces(services, redis_client)
        path = f"/webhook/pix/{provider}"
        response = _post(client, path, body, headers, length)
        assert response.status_code < 500, (path, body, response.get_data())
        if response.status_code != 200:
            assert traces(services, redis_client) == before, (path, body, response.status_code)

    case()
