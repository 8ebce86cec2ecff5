"""Signed webhook bodies of the wrong shape: refused with a 400, nothing written, never a 500.

Every body here carries a valid Stripe signature (checked by the real stripe library), so only the
shape checks in orders/billing/webhooks.py stand between it and the database.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.billing.stripe_events import HANDLERS
from orders.models import Order, OutboxMessage, WebhookEvent
from tests.orders.conftest import checkout_session, invoice, stripe_event, stripe_signature
from vmbackend.protocol.messages import too_deep

pytestmark = pytest.mark.django_db


def _post(client: Any, payload: bytes) -> Any:
    return client.post(
        reverse("orders:stripe_webhook"),
        data=payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=stripe_signature(payload),
    )


def _assert_nothing_written(order: Order) -> None:
    assert not WebhookEvent.objects.exists()
    assert not OutboxMessage.objects.exists()
    assert Order.objects.get(pk=order.pk).status == Order.Status.PENDING_PAYMENT


def _deep(depth: int) -> bytes:
    return (
        b'{"id": "evt_deep", "type": "invoice.paid", "data": {"object": {"lines": '
        + b"[" * depth
        + b"]" * depth
        + b"}}}"
    )


def _invoice_with(order: Order, **changes: Any) -> dict[str, Any]:
    obj = invoice(order)
    obj.update(changes)
    return stripe_event("invoice.paid", obj)


def _parent_details_as_string(order: Order) -> dict[str, Any]:
    obj = invoice(order)
    obj["parent"]["subscription_details"] = "sub_123"
    return stripe_event("invoice.paid", obj)


CASES = {
    "parent-as-string": lambda order: _invoice_with(order, parent="sub_123"),
    "parent-subscription-details-as-string": _parent_details_as_string,
    "legacy-subscription-details-as-string": lambda order: _invoice_with(
        order, parent=None, subscription_details="sub_123"
    ),
    "lines-as-string": lambda order: _invoice_with(order, lines="il_1"),
    "lines-data-of-strings": lambda order: _invoice_with(order, lines={"data": ["il_1"]}),
    "metadata-as-list": lambda order: stripe_event(
        "checkout.session.completed", checkout_session(order, metadata=["order_id"])
    ),
    "event-id-300-chars": lambda order: stripe_event(
        "checkout.session.completed", checkout_session(order), event_id="evt_" + "x" * 296
    ),
    "event-type-300-chars": lambda order: stripe_event("x" * 300, checkout_session(order)),
    "event-id-with-nul": lambda order: stripe_event(
        "checkout.session.completed", checkout_session(order), event_id="evt_\x00abc"
    ),
    "event-id-with-lone-surrogate": lambda order: stripe_event(
        "checkout.session.completed", checkout_session(order), event_id="evt_\ud800"
    ),
    "event-id-a-number": lambda order: stripe_event(
        "checkout.session.completed", checkout_session(order), event_id=12345
    ),
    "session-id-with-nul": lambda order: stripe_event(
        "checkout.session.completed", checkout_session(order, id="cs_\x00")
    ),
    "customer-id-300-chars": lambda order: stripe_event(
        "checkout.session.completed", checkout_session(order, customer="cus_" + "c" * 296)
    ),
    "subscription-an-object-with-a-list-id": lambda order: stripe_event(
        "checkout.session.completed", checkout_session(order, subscription={"id": ["sub_1"]})
    ),
    "payment-status-an-object": lambda order: stripe_event(
        "checkout.session.completed", checkout_session(order, payment_status={"paid": True})
    ),
    "nul-in-a-metadata-key": lambda order: stripe_event(
        "checkout.session.completed",
        checkout_session(order, metadata={"order_id": str(order.public_id), "\x00": "x"}),
    ),
}


@pytest.mark.parametrize("make_event", CASES.values(), ids=CASES.keys())
def test_a_signed_body_of_the_wrong_shape_is_refused(client, order, make_event):
    payload = json.dumps(make_event(order)).encode()

    response = _post(client, payload)

    assert response.status_code == 400
    _assert_nothing_written(order)


@pytest.mark.parametrize("depth", [33, 50_000], ids=["just-too-deep", "50k-brackets"])
def test_deeply_nested_json_is_refused(client, order, depth):
    response = _post(client, _deep(depth))

    assert response.status_code == 400
    _assert_nothing_written(order)


def test_a_normal_event_is_not_too_deep():  # for the depth scan the webhooks share with messages
    assert not too_deep(json.dumps(stripe_event("invoice.paid", {"lines": {"data": []}})))
    assert too_deep("[" * 33 + "]" * 33)
    assert not too_deep("[" * 32 + "]" * 32)
    assert not too_deep('{"a": "' + "[" * 100 + '\\"' + "{" * 100 + '"}')


def test_an_invoice_with_a_null_parent_is_still_accepted(client, order):
    payload = json.dumps(_invoice_with(order, parent=None, subscription=None)).encode()

    assert _post(client, payload).status_code == 200
    assert WebhookEvent.objects.get().result == WebhookEvent.Result.UNKNOWN_ORDER


# -- generated bodies ----------------------------------------------------------------------------

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=300),
    st.sampled_from(["", "evt_1", "sub_1", "cus_1", "paid", "\x00", "x" * 300]),
)
_json = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4)
    ),
    max_leaves=20,
)
_KEYS = [
    "id",
    "customer",
    "subscription",
    "client_reference_id",
    "payment_status",
    "metadata",
    "parent",
    "subscription_details",
    "lines",
    "data",
    "order_id",
    "status",
]
_object = st.dictionaries(st.sampled_from(_KEYS), _json, max_size=8)
# Objects the handlers read from, each key holding any JSON (rarely what Stripe sends).
_nested_object = st.dictionaries(
    st.sampled_from(_KEYS),
    st.one_of(_json, _object, st.fixed_dictionaries({"data": _json})),
    min_size=1,
    max_size=6,
)
_event = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"\Aevt_[a-z0-9]{1,20}\Z"),
        "type": st.sampled_from(sorted(HANDLERS)),
        "data": st.fixed_dictionaries({"object": _nested_object}),
    }
)
_event = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(max_size=300), _json),
        "type": st.one_of(st.sampled_from(sorted(HANDLERS)), st.text(max_size=120), _json),
        "livemode": _json,
        "data": st.one_of(st.fixed_dictionaries({"object": _object}), _json),
    }
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.one_of(_event, _json))
def test_a_signed_body_never_gives_a_server_error(client, order, body):
    payload = json.dumps(body).encode()

    response = _post(client, payload)

    assert response.status_code in (200, 400)


@pytest.mark.parametrize("event_type", sorted(HANDLERS))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(obj=_nested_object, n=st.integers(min_value=0, max_value=10**9))
def test_a_handled_event_with_odd_fields_never_gives_a_server_error(
    client, order, event_type, obj, n
):
    payload = json.dumps({"id": f"evt_h{n}", "type": event_type, "data": {"object": obj}})

    response = _post(client, payload.encode())

    assert response.status_code in (200, 400)
