"""The order's timeline and the owner's emails (orders/core/activity.py), from the events the shop
already receives: host events through the real broker and the event worker, Stripe webhooks
signed like Stripe's. Emails land in Django's locmem outbox, after the commit only."""

from __future__ import annotations

from typing import Any

import pika
import pytest
from django.core import mail

from orders.billing.cancellation import cancel_order
from orders.messaging.consumer import EventConsumer
from orders.models import Activity, Instance, Order
from tests.orders.conftest import invoice, stripe_event
from tests.orders.console_support import apply, event_body, make_ready, ready_fields
from vmbackend.protocol import messages

pytestmark = pytest.mark.django_db

K = Activity.Kind


@pytest.fixture(autouse=True)
def _locmem(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def _kinds(order: Order) -> list[str]:
    return list(
        Activity.objects.filter(order=order).order_by("at", "id").values_list("kind", flat=True)
    )


def _publish(channel: Any, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        channel.basic_publish(
            "warren.events",
            body["type"],
            messages.encode_event(body),
            pika.BasicProperties(content_type="application/json", delivery_mode=2, user_id="guest"),
        )


def test_ready_is_told_once_by_email_even_when_the_event_comes_twice(
    instance: Instance, amqp: Any, orders_amqp_url: str, django_capture_on_commit_callbacks: Any
) -> None:
    accepted = event_body(instance, messages.INSTANCE_ACCEPTED, image="tiny")
    ready = {**accepted, **ready_fields(instance), "type": messages.INSTANCE_READY, "seq": 2}
    ready["message_id"] = "m-ready"
    _publish(amqp, accepted, ready, ready)  # the broker redelivers: the same event twice

    with django_capture_on_commit_callbacks(execute=True):
        counts = EventConsumer(url=orders_amqp_url, idle_timeout=0.3).run(once=True)

    assert counts == {"applied": 2, "stale": 1}
    assert _kinds(instance.order) == [K.PAID, K.SETTING_UP, K.READY]
    [email] = mail.outbox
    assert email.to == ["alice@example.com"]
    assert "http://127.0.0.1:20001/" in email.body
    assert (
        instance.admin_password not in email.body and instance.admin_password not in email.subject
    )


def test_a_crash_is_told_once_and_the_restart_after_it_is_recorded(
    instance: Instance, django_capture_on_commit_callbacks: Any
) -> None:
    ready = make_ready(instance)
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        apply(ready, messages.INSTANCE_RESTARTING, reason="QEMU exited", attempt=1)
        apply(ready, messages.INSTANCE_RESTARTING, reason="boot failed", attempt=2)
        apply(ready, messages.INSTANCE_READY, **ready_fields(ready))

    assert _kinds(ready.order)[-2:] == [K.STOPPED, K.RESTARTED]
    [email] = mail.outbox
    assert "stopped unexpectedly" in email.subject


def test_a_server_that_cannot_be_restarted_is_told(
    instance: Instance, django_capture_on_commit_callbacks: Any
) -> None:
    ready = make_ready(instance)
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        apply(ready, messages.INSTANCE_RESTARTING, reason="QEMU exited", attempt=1)
        apply(ready, messages.INSTANCE_LOST, reason="gave up after 3 restarts")

    assert _kinds(ready.order)[-2:] == [K.STOPPED, K.LOST]
    assert [m.subject for m in mail.outbox][-1].endswith("is down")


def test_a_setup_that_fails_is_no_lost_server(
    instance: Instance, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        apply(instance, messages.INSTANCE_ACCEPTED, image="tiny")
        apply(instance, messages.INSTANCE_FAILED, reason="management API never answered")

    assert _kinds(instance.order) == [K.PAID, K.SETTING_UP, K.SETUP_FAILED]
    assert mail.outbox == []


def test_a_restart_the_owner_asked_for_is_not_an_unexpected_stop(
    instance: Instance, django_capture_on_commit_callbacks: Any
) -> None:
    import uuid

    from orders.console import commands as console

    ready = make_ready(instance)
    mail.outbox.clear()
    console.request_restart(order=ready.order, request_id=uuid.uuid4())

    with django_capture_on_commit_callbacks(execute=True):
        apply(ready, messages.INSTANCE_RESTARTING, reason="restart requested", attempt=1)

    assert K.STOPPED not in _kinds(ready.order)
    assert mail.outbox == []


def test_a_failed_renewal_is_told_once(
    instance: Instance, post_webhook: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ready = make_ready(instance)
    mail.outbox.clear()
    failed = stripe_event("invoice.payment_failed", invoice(ready.order))

    with django_capture_on_commit_callbacks(execute=True):
        assert post_webhook(failed).status_code == 200
        assert post_webhook(failed).status_code == 200  # Stripe's redelivery

    assert Order.objects.get(pk=ready.order.pk).status == Order.Status.PAST_DUE
    assert _kinds(ready.order)[-1] == K.PAYMENT_FAILED
    [email] = mail.outbox
    assert "did not go through" in email.subject


def test_a_cancellation_is_on_the_timeline(instance: Instance) -> None:
    cancel_order(order=instance.order, reason="Cancelled by staff (bob)", cancel_subscription=False)

    line = Activity.objects.filter(order=instance.order).latest("id")
    assert (line.kind, line.message) == (K.CANCELLED, "Order cancelled: Cancelled by staff.")


def test_an_event_that_changes_nothing_adds_no_line(instance: Instance) -> None:
    ready = make_ready(instance)
    before = _kinds(ready.order)
    apply(ready, messages.INSTANCE_STARTED)  # recorded by seq only
    apply(ready, messages.INSTANCE_ACCEPTED, image="tiny")  # ignored when ready
    assert _kinds(ready.order) == before


def test_a_delayed_first_payment_that_fails_is_told_and_cancels(
    order: Order, post_webhook: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from tests.orders.conftest import checkout_session

    with django_capture_on_commit_callbacks(execute=True):
        post_webhook(
            stripe_event(
                "checkout.session.completed", checkout_session(order, payment_status="unpaid")
            )
        )
        post_webhook(stripe_event("checkout.session.async_payment_failed", checkout_session(order)))

    assert _kinds(order) == [K.CANCELLED, K.PAYMENT_FAILED]
    [email] = mail.outbox
    assert "was cancelled: the payment failed" in email.subject


def test_an_expired_checkout_sends_no_email(
    order: Order, post_webhook: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from tests.orders.conftest import checkout_session

    with django_capture_on_commit_callbacks(execute=True):
        post_webhook(stripe_event("checkout.session.expired", checkout_session(order)))

    assert _kinds(order) == [K.CANCELLED]
    assert mail.outbox == []


def test_a_refund_is_on_the_timeline(order: Order) -> None:
    from django.utils import timezone

    from orders.billing.checkout import settle_refund

    Order.objects.filter(pk=order.pk).update(
        status=Order.Status.CANCELLED,
        refund_status=Order.RefundStatus.PENDING,
        refund_requested_at=timezone.now(),
    )

    assert settle_refund(order=order) is True  # offline: no money moved, recorded at once
    assert settle_refund(order=order) is True  # already refunded: no second line

    assert _kinds(order) == [K.REFUNDED]
