"""Idempotency-Key on every POST: a repeat answers the first answer, another request with the
key 422, a repeat while the first runs 409; keys belong to one token."""

from __future__ import annotations

import pytest
from django.test import RequestFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.api.middleware import _fingerprint
from orders.models import ApiToken, ConsoleCommand, IdempotentRequest, Order
from tests.orders.api.schema_walk import fill, operations

POSTS = [op for op in operations() if op.method == "post"]


@pytest.mark.parametrize("op", POSTS, ids=lambda op: op.id)
def test_every_post_answers_a_repeat_with_its_first_answer(op, alice):
    path, body = fill(op, alice)
    counts = (Order.objects.count(), ConsoleCommand.objects.count())
    first = alice.api.call("POST", path, body, key="same-key")
    again = alice.api.call("POST", path, body, key="same-key")
    assert first[0] < 300
    assert (again[0], again[1]) == (first[0], first[1])
    assert again[2]["Idempotent-Replayed"] == "true"
    made = (Order.objects.count(), ConsoleCommand.objects.count())
    assert made[0] - counts[0] <= 1 and made[1] - counts[1] <= 1  # once, not twice


def test_the_same_key_for_another_request_is_422(alice):
    server = alice.order.public_id
    assert alice.api.call("POST", f"/servers/{server}/restart", key="k")[0] == 202
    status, body, response = alice.api.call("POST", f"/servers/{server}/rotate-password", key="k")
    assert status == 422 and body["type"].endswith("/key-reused")
    assert response["Content-Type"] == "application/problem+json"


def test_a_repeat_while_the_first_still_runs_is_409(alice):
    """Race: the first request with the key has its row but no answer yet; the repeat waits."""
    row = ApiToken.objects.get(user=alice.user, name="rw")
    path = f"/servers/{alice.order.public_id}/restart"
    request = RequestFactory().post("/api/v1" + path, content_type="application/json")
    IdempotentRequest.objects.create(token=row, key="busy", request_hash=_fingerprint(request))
    status, body, response = alice.api.call("POST", path, key="busy")
    assert status == 409 and body["type"].endswith("/key-in-use")
    assert response["Retry-After"] == "1"
    assert not ConsoleCommand.objects.filter(instance=alice.instance, status="sent").exists()


def test_keys_belong_to_one_token(alice, bob):
    mine = alice.api.call("POST", f"/servers/{alice.order.public_id}/restart", key="shared")
    theirs = bob.api.call("POST", f"/servers/{bob.order.public_id}/restart", key="shared")
    assert mine[0] == theirs[0] == 202
    assert mine[1]["id"] != theirs[1]["id"]


def test_a_refusal_is_kept_too_and_a_server_error_is_not(alice, monkeypatch):
    path = f"/servers/{alice.order.public_id}/restart"
    assert alice.api.call("POST", path)[0] == 202  # now one is pending
    refused = alice.api.call("POST", path, key="r")
    assert refused[0] == 409
    assert alice.api.call("POST", path, key="r")[1] == refused[1]

    from orders.api import servers

    def crash(order, request_id):
        raise RuntimeError("boom")

    monkeypatch.setattr(servers, "_rotate", crash)
    rotate = f"/servers/{alice.order.public_id}/rotate-password"
    assert alice.api.call("POST", rotate, key="c")[0] == 500
    assert not IdempotentRequest.objects.filter(key="c").exists()  # a retry runs again


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(min_size=0, max_size=300))
def test_any_key_is_either_used_or_refused_with_400(alice, key):
    try:
        response = alice.api.client.post(
            f"/api/v1/servers/{alice.order.public_id}/alarms",
            data='{"kind": "connections", "threshold": 5, "minutes": 1}',
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {alice.api.token}",
            HTTP_IDEMPOTENCY_KEY=key,
        )
    except UnicodeEncodeError:  # a header the HTTP client cannot even send
        return
    assert response.status_code in (201, 400), response.content
    if response.status_code == 400:
        assert response["Content-Type"] == "application/problem+json"
