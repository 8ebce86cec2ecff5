"""Per-customer and per-server limits hold under concurrent requests (real threads, each with its
own connection, PostgreSQL's row locks): 8 checkouts at once leave exactly the limit of unpaid
orders, 8 alarm adds at once exactly the limit of alarms."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection  # noqa: F401 - needs_row_locks evaluates its condition here

from orders.billing.checkout import CheckoutError, start_checkout
from orders.models import Alarm, Instance, Order
from orders.monitoring.alarms import AlarmError, add_alarm
from store.models import Plan
from tests.orders.billing.test_webhooks_concurrency import THREADS, _run_at_once, needs_row_locks
from tests.orders.console_support import make_ready

pytestmark = pytest.mark.django_db(transaction=True)


@needs_row_locks
def test_checkouts_at_once_never_exceed_the_unpaid_order_limit(
    customer: Any, plan: Plan, settings: Any
) -> None:
    settings.STRIPE_SECRET_KEY = ""
    settings.PENDING_ORDERS_PER_CUSTOMER = 3

    results = _run_at_once([lambda: start_checkout(user=customer, plan=plan)] * THREADS)

    refused = [r for r in results if isinstance(r, CheckoutError)]
    assert len(refused) == THREADS - 3, results
    assert Order.objects.filter(user=customer, status=Order.Status.PENDING_PAYMENT).count() == 3


@needs_row_locks
def test_alarms_added_at_once_never_exceed_the_limit(instance: Instance, settings: Any) -> None:
    ready = make_ready(instance)
    settings.ALARMS_PER_SERVER = 3
    calls = [
        (lambda n=n: add_alarm(instance=ready, kind="connections", threshold=n, minutes=1))
        for n in range(THREADS)
    ]

    results = _run_at_once(calls)

    refused = [r for r in results if isinstance(r, AlarmError)]
    assert len(refused) == THREADS - 3, results
    assert Alarm.objects.filter(instance=ready, is_default=False).count() == 3
