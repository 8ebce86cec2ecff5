"""Tenancy as on the pages: every operation on another customer's object answers 404 (the same
as for one that does not exist), and changes nothing. Walked over the schema, so a new endpoint is
covered the day it is added."""

from __future__ import annotations

import uuid

import pytest

from orders.models import Alarm, ConsoleCommand, Order
from tests.orders.api.conftest import API
from tests.orders.api.schema_walk import check_answer, fill, operations

OPERATIONS = operations()
ON_AN_OBJECT = [op for op in OPERATIONS if "{" in op.path]
# Operations on no customer's object, and why they cannot leak one.
NO_OBJECT = {
    "GET /plans": "the plans on sale: the same for everyone",
    "GET /servers": "the caller's own servers (checked below: none of another's)",
    "POST /servers": "buys a server for the caller",
}


def test_every_operation_is_on_an_object_or_listed():
    assert {op.id for op in OPERATIONS if op not in ON_AN_OBJECT} == set(NO_OBJECT)


def _state(customer) -> tuple:
    return (
        Order.objects.get(pk=customer.order.pk).status,
        ConsoleCommand.objects.filter(instance=customer.instance).count(),
        Alarm.objects.filter(instance=customer.instance).count(),
    )


@pytest.mark.parametrize("op", ON_AN_OBJECT, ids=lambda op: op.id)
def test_another_customers_object_is_not_found(op, alice, bob):
    before = _state(alice)
    path, body = fill(op, alice)
    status, parsed, response = bob.api.call(op.method, path, body)
    assert status == 404, parsed
    check_answer(op, status, parsed, response["Content-Type"])
    assert parsed["instance"] == API + path
    assert _state(alice) == before
    # ... exactly as for an object that does not exist at all (nothing tells them apart).
    _, nowhere, _ = bob.api.call(op.method, _nowhere(path, alice), body)
    assert {k: v for k, v in nowhere.items() if k != "instance"} == {
        k: v for k, v in parsed.items() if k != "instance"
    }


def _nowhere(path: str, owner) -> str:
    for real in (owner.order.public_id, owner.job.request_id):
        path = path.replace(str(real), str(uuid.uuid4()))
    return path.replace(f"/alarms/{owner.alarm.pk}", "/alarms/999999")


def test_the_server_list_shows_only_the_callers_servers(alice, bob):
    status, parsed, _ = bob.api.call("GET", "/servers")
    assert status == 200
    assert [s["id"] for s in parsed["items"]] == [str(bob.order.public_id)]
