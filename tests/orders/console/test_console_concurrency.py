"""Console actions submitted at the same moment (real threads, real transactions, PostgreSQL's
row locks): the same form twice sends once, two different actions send one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection  # noqa: F401 - needs_row_locks evaluates its condition here

from orders.console import commands as console
from orders.models import ConsoleCommand, Instance, Order, OutboxMessage
from store.models import Plan
from tests.orders.billing.test_webhooks_concurrency import THREADS, _run_at_once, needs_row_locks
from tests.orders.console_support import install_fake_stripe, make_ready

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ready(instance: Instance) -> Instance:
    return make_ready(instance)


def _sent(instance: Instance) -> int:
    return OutboxMessage.objects.filter(instance=instance, routing_key="host.host-a").count()


@needs_row_locks
def test_the_same_form_posted_at_once_sends_one_command(ready: Instance) -> None:
    rid = uuid.uuid4()
    call: Callable[[], Any] = lambda: console.request_restart(order=ready.order, request_id=rid)  # noqa: E731

    results = _run_at_once([call] * THREADS)

    assert all(isinstance(r, console.Started) for r in results), results
    assert sorted(r.new for r in results) == [False] * (THREADS - 1) + [True]
    assert ConsoleCommand.objects.count() == 1 and _sent(ready) == 1


@needs_row_locks
def test_different_actions_at_once_send_one(ready: Instance) -> None:
    calls = [
        (lambda: console.request_restart(order=ready.order, request_id=uuid.uuid4()))
        if n % 2
        else (lambda: console.request_password_rotation(order=ready.order, request_id=uuid.uuid4()))
        for n in range(THREADS)
    ]

    results = _run_at_once(calls)

    started = [r for r in results if isinstance(r, console.Started)]
    refused = [r for r in results if isinstance(r, console.ConsoleError)]
    assert len(started) == 1 and len(refused) == THREADS - 1, results
    assert ConsoleCommand.objects.count() == 1 and _sent(ready) == 1


# -- plan changes from two (or eight) tabs, Stripe's HTTP side faked -------------------------------


def _priced_plan(slug: str, memory_mb: int, cents: int) -> Plan:
    return Plan.objects.create(
        slug=slug,
        name=slug.title(),
        memory_mb=memory_mb,
        vcpus=2,
        disk_gb=8,
        max_connections=100,
        max_queues=200,
        monthly_price_cents=cents,
        stripe_price_id=f"price_{slug}",
    )


@needs_row_locks
def test_plan_changes_at_once_touch_stripe_once_at_the_winners_price(
    ready: Instance, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    fake = install_fake_stripe(monkeypatch, settings)
    slow_request = fake.request

    def request(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)  # a Stripe round trip: the window two tabs' requests share
        return slow_request(*args, **kwargs)

    monkeypatch.setattr("stripe.RequestsClient.request", lambda self, *a, **k: request(*a, **k))
    Plan.objects.filter(pk=ready.order.plan.pk).update(stripe_price_id="price_small")
    Order.objects.filter(pk=ready.order.pk).update(
        stripe_subscription_id="sub_123", stripe_customer_id="cus_123"
    )
    subscription = {
        "id": "sub_123",
        "object": "subscription",
        "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item"}]},
    }
    fake.answer("GET", "/v1/subscriptions/sub_123", subscription)
    fake.answer("POST", "/v1/subscriptions/sub_123", subscription)
    plans = [_priced_plan("bigger", 1024, 1900), _priced_plan("biggest", 2048, 3900)]
    calls = [
        (
            lambda plan=plans[n % 2]: console.request_plan_change(
                order=ready.order, request_id=uuid.uuid4(), plan=plan
            )
        )
        for n in range(THREADS)
    ]

    results = _run_at_once(calls)

    started = [r for r in results if isinstance(r, console.Started)]
    refused = [r for r in results if isinstance(r, console.ConsoleError)]
    assert len(started) == 1 and len(refused) == THREADS - 1, results
    assert all("Plan change in progress" in str(r) for r in refused), refused
    [command] = ConsoleCommand.objects.all()
    assert command.billing == ConsoleCommand.Billing.CHANGED
    # Exactly one Subscription.modify, at the winner's price: never a revert beside it.
    updates = [c for c in fake.calls if c["method"] == "POST"]
    assert [u["form"]["items[0][price]"] for u in updates] == [command.to_plan.stripe_price_id]
    assert updates[0]["idempotency_key"] == f"plan-{command.request_id}"
    [resize] = OutboxMessage.objects.filter(instance=ready, routing_key="host.host-a")
    assert resize.body["options"]["memory-mb"] == command.to_plan.memory_mb
