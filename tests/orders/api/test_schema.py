"""The OpenAPI schema is served, and every operation in it answers what it says (status, media
type, body shape), for its owner and for a stranger; errors included."""

from __future__ import annotations

import json

import pytest

from orders.api.api import schema
from tests.orders.api.conftest import Api
from tests.orders.api.schema_walk import check_answer, fill, operations

OPERATIONS = operations()


def test_the_schema_is_served_without_a_token(client, db):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    served = json.loads(response.content)
    assert served == json.loads(json.dumps(schema(), default=str))
    assert served["openapi"].startswith("3.")
    assert len(served["paths"]) >= 10


def test_every_operation_needs_a_token_in_the_schema():
    assert all(op.spec.get("security") == [{"TokenAuth": []}] for op in OPERATIONS)


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.id)
def test_each_operation_answers_its_owner_as_the_schema_says(op, alice, bob):
    path, body = fill(op, alice)
    status, parsed, response = alice.api.call(op.method, path, body)
    assert status < 300, parsed
    check_answer(op, status, parsed, response.get("Content-Type", ""))


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.id)
def test_each_operation_answers_errors_as_the_schema_says(op, alice):
    path, body = fill(op, alice)
    status, parsed, response = Api(alice.api.client, "").call(op.method, path, body)
    assert status == 401
    check_answer(op, status, parsed, response["Content-Type"])
    assert response["WWW-Authenticate"].startswith("Bearer")
    if op.writes:
        status, parsed, response = alice.reader.call(op.method, path, body)
        assert status == 403, parsed
        check_answer(op, status, parsed, response["Content-Type"])


def test_a_wrong_answer_is_caught_by_the_check(alice):
    """The check bites: a body missing a required field fails validation."""
    op = next(op for op in OPERATIONS if op.id == "GET /servers/{server_id}")
    path, _ = fill(op, alice)
    _, parsed, response = alice.api.call("GET", path)
    del parsed["status"]
    with pytest.raises(Exception, match="'status' is a required property"):
        check_answer(op, 200, parsed, response["Content-Type"])
