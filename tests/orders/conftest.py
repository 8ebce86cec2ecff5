"""Fixtures for the orders tests: customers, plans, orders, and Stripe events signed like Stripe.

Signatures are computed here from scratch (HMAC-SHA256 of "<ts>.<body>") and verified by the real
stripe library in the code under test; nothing about signature checking is mocked.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from orders.core.provisioning import request_provisioning
from orders.models import Instance, Order
from store.models import Plan
from tests.stripe_signing import stripe_signature as sign_payload
from vmbackend.protocol import topology


@pytest.fixture(autouse=True)
def _shared_broker_user(shared_broker_user: None) -> None:
    """The orders tests publish events as guest (tests/conftest.py `shared_broker_user`)."""


def stripe_signature(
    payload: bytes, *, secret: str | None = None, timestamp: int | None = None
) -> str:
    """Signed with the shop's webhook secret unless `secret` is given."""
    return sign_payload(payload, secret or settings.STRIPE_WEBHOOK_SECRET, timestamp)


def stripe_event(
    event_type: str, obj: dict[str, Any], *, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_test_{secrets.token_hex(8)}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": obj},
    }


def checkout_session(order: Order, **overrides: Any) -> dict[str, Any]:
    session = {
        "id": f"cs_test_{order.public_id.hex[:16]}",
        "object": "checkout.session",
        "mode": "subscription",
        "payment_status": "paid",
        "status": "complete",
        "client_reference_id": str(order.public_id),
        "metadata": {"order_id": str(order.public_id)},
        "customer": f"cus_test_{order.public_id.hex[:8]}",
        "subscription": f"sub_test_{order.public_id.hex[:16]}",
    }
    session.update(overrides)
    return session


def invoice(
    order: Order, *, subscription: str | None = None, metadata: bool = True
) -> dict[str, Any]:
    sub = subscription or f"sub_test_{order.public_id.hex[:16]}"
    return {
        "id": f"in_test_{secrets.token_hex(6)}",
        "object": "invoice",
        "customer": f"cus_test_{order.public_id.hex[:8]}",
        "billing_reason": "subscription_create",
        "parent": {
            "type": "subscription_details",
            "subscription_details": {
                "subscription": sub,
                "metadata": {"order_id": str(order.public_id)} if metadata else {},
            },
        },
    }


def subscription(order: Order, *, metadata: bool = True) -> dict[str, Any]:
    return {
        "id": f"sub_test_{order.public_id.hex[:16]}",
        "object": "subscription",
        "status": "canceled",
        "metadata": {"order_id": str(order.public_id)} if metadata else {},
    }


@pytest.fixture
def plan(db: None) -> Plan:
    return Plan.objects.create(
        slug="orders-test-small",
        name="Test small",
        memory_mb=512,
        vcpus=1,
        disk_gb=4,
        max_connections=100,
        max_queues=200,
        monthly_price_cents=900,
        currency="usd",
    )


@pytest.fixture
def customer(db: None) -> Any:
    return get_user_model().objects.create_user("alice", "alice@example.com", "pw-alice-123456")


@pytest.fixture
def order(customer: Any, plan: Plan) -> Order:
    return Order.objects.create(user=customer, plan=plan)


def provision(order: Order) -> Instance | None:
    """request_provisioning as the payment path calls it: in a transaction, the order row locked."""
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        return request_provisioning(order=locked)


@pytest.fixture
def instance(order: Order) -> Instance:
    """`order`, paid: its Instance is requested and a create-vm row waits in the outbox."""
    made = provision(order)
    assert made is not None
    return made


@pytest.fixture
def signed() -> Callable[..., tuple[bytes, str]]:
    """signed(event_dict or bytes, timestamp=..., secret=...) -> (payload, Stripe-Signature)."""

    def sign(event: dict[str, Any] | bytes, **kwargs: Any) -> tuple[bytes, str]:
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        return payload, stripe_signature(payload, **kwargs)

    return sign


@pytest.fixture
def post_webhook(client: Any, signed: Callable[..., tuple[bytes, str]]) -> Callable[..., Any]:
    """POST an event to the real webhook URL through the Django test client."""
    from django.urls import reverse

    def post(event: dict[str, Any] | bytes, **kwargs: Any) -> Any:
        payload, signature = signed(event, **kwargs)
        return client.post(
            reverse("orders:stripe_webhook"),
            data=payload,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=signature,
        )

    return post


# -- the control broker -------------------------------------------------------------------------

QUEUES_TO_PURGE = (topology.CREATE_QUEUE, topology.EVENTS_STORE_QUEUE, topology.DEAD_QUEUE)


@pytest.fixture(scope="session")
def orders_amqp_url() -> Any:
    """A vhost of our own on the real broker: the create-vm rows these tests publish must never
    reach a daemon started by another test in the same session."""
    from tests.conftest import drop_vhost, make_vhost, vhost_url

    vhost = make_vhost("warren-orders-test")
    yield vhost_url(vhost)
    drop_vhost(vhost)


@pytest.fixture
def amqp(orders_amqp_url: str) -> Any:
    """A channel on our vhost with the shop's topology declared and its queues empty."""
    from orders.messaging import broker

    connection = broker.connect(orders_amqp_url)
    channel = connection.channel()
    # Publisher confirms: a quorum queue takes a message through its log, so only a confirmed
    # publish is sure to be there for the basic_get that follows it.
    channel.confirm_delivery()
    broker.declare_topology(channel)
    for queue in QUEUES_TO_PURGE:
        channel.queue_purge(queue)
    yield channel
    for queue in QUEUES_TO_PURGE:
        channel.queue_purge(queue)
    connection.close()


def get_all(channel: Any, queue: str) -> list[tuple[Any, Any, bytes]]:
    """Every message now in `queue` (acked), as (method, properties, body)."""
    messages = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((method, properties, body))
