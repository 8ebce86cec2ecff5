"""Concurrent webhook deliveries provision exactly once (real threads, real transactions)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from orders.billing.webhooks import WebhookResult, process_webhook
from orders.models import Instance, Order, OutboxMessage, WebhookEvent
from tests.orders.conftest import checkout_session, invoice, stripe_event, stripe_signature

pytestmark = pytest.mark.django_db(transaction=True)

# Django's SQLite test database is an in-memory, shared-cache database: a second writer gets
# SQLITE_LOCKED ("database table is locked") at once, without waiting for the busy timeout. A real
# SQLite file serialises writers (settings use IMMEDIATE transactions with a timeout); that case
# is proven in a subprocess by test_concurrent_deliveries_on_a_sqlite_file_provision_once.
needs_row_locks = pytest.mark.skipif(
    "connection.vendor == 'sqlite'",
    reason="in-memory shared-cache SQLite cannot run writers concurrently",
)

THREADS = 8


def _run_at_once(calls: list[Callable[[], WebhookResult]]) -> list[Any]:
    """Run every call in its own thread (own DB connection), released together by a barrier."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[n] = calls[n]()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[n] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _delivery(event: dict) -> Callable[[], WebhookResult]:
    payload = json.dumps(event).encode()
    signature = stripe_signature(payload)
    return lambda: process_webhook(payload=payload, signature=signature)


@needs_row_locks
def test_the_same_event_delivered_at_once_provisions_once(order):
    event = stripe_event("checkout.session.completed", checkout_session(order))

    results = _run_at_once([_delivery(event)] * THREADS)

    assert all(isinstance(r, WebhookResult) for r in results), results
    assert sorted(r.duplicate for r in results) == [False] + [True] * (THREADS - 1)
    assert Instance.objects.count() == 1
    assert OutboxMessage.objects.count() == 1
    assert WebhookEvent.objects.count() == 1
    assert Order.objects.get(pk=order.pk).status == Order.Status.PAID


@needs_row_locks
def test_session_completed_and_invoice_paid_at_once_provision_once(order):
    events = [
        stripe_event("checkout.session.completed", checkout_session(order)),
        stripe_event("invoice.paid", invoice(order)),
    ] * (THREADS // 2)  # distinct event ids: only the order lock keeps them apart
    events = [{**e, "id": f"{e['id']}_{n}"} for n, e in enumerate(events)]

    results = _run_at_once([_delivery(e) for e in events])

    assert all(isinstance(r, WebhookResult) for r in results), results
    assert [r.result for r in results].count("processed") == 1
    assert Instance.objects.count() == 1
    assert OutboxMessage.objects.count() == 1
    assert WebhookEvent.objects.count() == THREADS


@needs_row_locks
def test_cancellation_racing_payment_leaves_a_consistent_order(order):
    from tests.orders.conftest import subscription

    events = [
        stripe_event("checkout.session.completed", checkout_session(order)),
        stripe_event("customer.subscription.deleted", subscription(order)),
    ]

    results = _run_at_once([_delivery(e) for e in events])

    assert all(isinstance(r, WebhookResult) for r in results), results
    order = Order.objects.get(pk=order.pk)
    creates = OutboxMessage.objects.filter(routing_key="create-vm").count()
    deletes = OutboxMessage.objects.filter(routing_key="delete-vm").count()
    # Either the payment won (VM requested, then deleted) or the cancellation won (no VM).
    assert (order.status, creates, deletes) in (
        (Order.Status.DELETING, 1, 1),
        (Order.Status.CANCELLED, 0, 0),
    )


SQLITE_SCRIPT = """
import json, sys, threading
import django
django.setup()
from django.core.management import call_command
from django.contrib.auth import get_user_model
from django.db import connection
from orders.models import Instance, Order, OutboxMessage
from orders.billing.webhooks import process_webhook
from store.models import Plan
from tests.orders.conftest import checkout_session, invoice, stripe_event, stripe_signature

call_command("migrate", verbosity=0)
user = get_user_model().objects.create_user("bob")
plan = Plan.objects.create(slug="p", name="P", memory_mb=512, disk_gb=4, max_connections=1,
                           max_queues=1, monthly_price_cents=100)
order = Order.objects.create(user=user, plan=plan)
same = stripe_event("checkout.session.completed", checkout_session(order))
events = [same] * 4 + [stripe_event("invoice.paid", invoice(order)) for _ in range(4)]
barrier = threading.Barrier(len(events))
errors = []

def deliver(event):
    payload = json.dumps(event).encode()
    try:
        barrier.wait()
        process_webhook(payload=payload, signature=stripe_signature(payload))
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        connection.close()

threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"errors": errors, "instances": Instance.objects.count(),
                  "outbox": OutboxMessage.objects.count(),
                  "status": Order.objects.get(pk=order.pk).status}))
"""


@pytest.mark.django_db(transaction=False)
def test_concurrent_deliveries_on_a_sqlite_file_provision_once(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "store.settings",
        "PYTHONPATH": str(root),
        "WARREN_LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-c", SQLITE_SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"errors": [], "instances": 1, "outbox": 1, "status": "paid"}


@needs_row_locks
def test_payments_for_a_cancelled_order_arriving_at_once_refund_once(order, settings):
    from unittest import mock

    import stripe
    from django.utils import timezone

    settings.STRIPE_SECRET_KEY = "sk_test_warren"
    order.move_to(Order.Status.CANCELLED, cancelled_at=timezone.now())
    session = checkout_session(order, payment_intent="pi_test_1")
    paid = {**invoice(order), "payment_intent": "pi_test_1"}
    events = [
        stripe_event("checkout.session.completed", session),
        stripe_event("invoice.paid", paid),
    ] * (THREADS // 2)
    events = [{**e, "id": f"{e['id']}_{n}"} for n, e in enumerate(events)]
    refund = stripe.StripeObject.construct_from({"id": "re_test_1"}, "sk_test_warren")

    with (
        mock.patch("stripe.RefundService.create", return_value=refund) as create,
        mock.patch("stripe.SubscriptionService.cancel"),
    ):
        results = _run_at_once([_delivery(e) for e in events])

    assert all(isinstance(r, WebhookResult) for r in results), results
    assert create.call_count == 1
    order = Order.objects.get(pk=order.pk)
    assert (order.status, order.refund_status, order.stripe_refund_id) == (
        "cancelled",
        "refunded",
        "re_test_1",
    )
