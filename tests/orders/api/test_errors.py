"""One error shape: every error answer of /api/v1/ is RFC 9457 problem+json, the rate limit
answers 429 with Retry-After, pagination walks every row once."""

from __future__ import annotations

import json

import pytest
from django.core.cache import cache
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.models import Order
from tests.orders.conftest import provision

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}


def _is_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert PROBLEM_KEYS <= set(body) and body["status"] == status
    assert "Traceback" not in response.content.decode()
    return body


def test_an_unknown_url_is_a_404_problem(alice):
    _is_problem(alice.api.call("GET", "/no-such-thing")[2], 404)


def test_a_wrong_method_is_a_405_problem_with_allow(alice):
    response = alice.api.call("PUT", "/servers")[2]
    _is_problem(response, 405)
    assert "GET" in response["Allow"]


def test_invalid_input_is_a_422_problem_listing_where(alice):
    body = _is_problem(alice.api.call("POST", "/servers", {"plan": ["x"]})[2], 422)
    assert body["errors"][0]["loc"][-1] == "plan"
    body = _is_problem(alice.api.call("POST", "/servers", {"plan": "nope"})[2], 422)
    assert body["type"].endswith("/no-such-plan")


def test_a_body_that_is_not_json_is_a_problem(alice):
    response = alice.api.client.post(
        "/api/v1/servers",
        data=b"{nope",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {alice.api.token}",
    )
    assert response.status_code in (400, 422)
    _is_problem(response, response.status_code)


def test_a_crash_is_a_500_problem_without_details(alice, monkeypatch):
    from orders.api import present

    def crash(*args, **kwargs):
        raise RuntimeError("secret-detail")

    monkeypatch.setattr(present, "server_body", crash)
    response = alice.api.call("GET", f"/servers/{alice.order.public_id}")[2]
    body = _is_problem(response, 500)
    assert "secret-detail" not in json.dumps(body)


@pytest.fixture
def limit(settings):
    cache.clear()
    settings.API_RATE_LIMIT = 3
    settings.API_RATE_WINDOW_SECONDS = 3600
    yield
    cache.clear()


def test_more_requests_than_the_limit_get_429_with_retry_after(alice, bob, limit):
    answers = [alice.api.call("GET", "/plans")[0] for _ in range(4)]
    assert answers == [200, 200, 200, 429]
    response = alice.api.call("GET", "/plans")[2]
    body = _is_problem(response, 429)
    assert 1 <= int(response["Retry-After"]) <= 3600
    assert body["type"].endswith("/rate-limited")
    # Per token: alice's read token and bob still have theirs.
    assert alice.reader.call("GET", "/plans")[0] == 200
    assert bob.api.call("GET", "/plans")[0] == 200


def test_the_counter_survives_its_eviction(alice, limit):
    """The counter vanishing between add and incr (an eviction) starts a new count, not a 500."""
    from orders.api import middleware

    real_incr = cache.incr
    calls = []

    def evicted_once(key, delta=1):
        if not calls:
            calls.append(key)
            cache.delete(key)
        return real_incr(key, delta)

    original = middleware.cache.incr
    middleware.cache.incr = evicted_once
    try:
        assert alice.api.call("GET", "/plans")[0] == 200
    finally:
        middleware.cache.incr = original
    assert calls


def test_pages_walk_every_server_once(alice, api_plans):
    for _ in range(4):
        provision(Order.objects.create(user=alice.user, plan=api_plans[1]))
    seen, cursor, pages = [], "", 0
    while True:
        status, body, _ = alice.api.call("GET", f"/servers?limit=2&cursor={cursor}")
        assert status == 200 and len(body["items"]) <= 2
        seen += [s["id"] for s in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    mine = Order.objects.filter(user=alice.user).order_by("-pk")
    assert seen == [str(o.public_id) for o in mine]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "cursor=%%%", "cursor=YWJj"])
def test_a_bad_page_request_is_a_problem(alice, query):
    response = alice.api.call("GET", f"/servers?{query}")[2]
    assert response.status_code in (400, 422)
    _is_problem(response, response.status_code)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cursor=st.text(max_size=40))
def test_any_cursor_gives_a_page_or_a_400(alice, cursor):
    from urllib.parse import quote

    response = alice.api.call("GET", f"/servers?cursor={quote(cursor)}")[2]
    assert response.status_code in (200, 400), response.content
