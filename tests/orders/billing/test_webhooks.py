"""The Stripe webhook, through the real URL (orders:stripe_webhook) and the real stripe library."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from unittest import mock

import pytest
import stripe
from django.db import IntegrityError, transaction
from django.utils import timezone

from orders.billing.checkout import settle_refund
from orders.billing.webhooks import WebhookError, process_webhook
from orders.models import Instance, Order, OutboxMessage, WebhookEvent
from tests.orders.conftest import (
    checkout_session,
    invoice,
    stripe_event,
    stripe_signature,
    subscription,
)

pytestmark = pytest.mark.django_db


def _completed(order: Order, **overrides: object) -> dict:
    return stripe_event("checkout.session.completed", checkout_session(order, **overrides))


def _reload(order: Order) -> Order:
    return Order.objects.get(pk=order.pk)


def test_it_marks_the_order_paid_and_queues_one_create_vm(order, post_webhook, settings):
    settings.INSTANCE_IMAGE = "rabbitmq"
    event = _completed(order)

    response = post_webhook(event)

    assert response.status_code == 200
    order = _reload(order)
    assert order.status == Order.Status.PAID
    assert order.paid_at is not None
    assert order.stripe_checkout_session_id == event["data"]["object"]["id"]
    assert order.stripe_subscription_id == event["data"]["object"]["subscription"]
    assert order.stripe_customer_id == event["data"]["object"]["customer"]
    instance = order.instance
    assert instance.status == Instance.Status.REQUESTED
    assert len(instance.admin_password) >= 32
    (row,) = OutboxMessage.objects.all()
    assert (row.exchange, row.routing_key, row.sent_at) == ("computing", "create-vm", None)
    assert row.body == {
        "version": 1,
        "command": "create-vm",
        "options": {
            "image": "rabbitmq",
            "vm-id": str(instance.public_id),
            "memory-mb": 512,
            "vcpus": 1,
            "disk-gb": 4,
            # Never stored in the outbox: the relay fills it in from the instance (test_outbox).
            "admin": {"username": instance.admin_username, "password": ""},
            "limits": {"max-connections": 100, "max-queues": 200},
        },
    }
    receipt = WebhookEvent.objects.get(stripe_event_id=event["id"])
    assert (receipt.result, receipt.order) == (WebhookEvent.Result.PROCESSED, order)


def test_it_rejects_a_bad_signature(order, post_webhook):
    response = post_webhook(_completed(order), secret="whsec_someone_else")

    assert response.status_code == 400
    assert _reload(order).status == Order.Status.PENDING_PAYMENT
    assert not WebhookEvent.objects.exists()
    assert not OutboxMessage.objects.exists()


def test_a_rejection_is_logged_without_the_payload(order, post_webhook, caplog):
    caplog.set_level("WARNING")

    post_webhook(_completed(order), secret="whsec_someone_else")

    assert "event=stripe_webhook_rejected" in caplog.text
    assert str(order.public_id) not in caplog.text


def test_it_rejects_a_missing_signature(order, client):
    from django.urls import reverse

    response = client.post(
        reverse("orders:stripe_webhook"),
        data=json.dumps(_completed(order)),
        content_type="application/json",
    )

    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


def test_it_rejects_a_stale_timestamp(order, post_webhook):
    response = post_webhook(_completed(order), timestamp=int(time.time()) - 301)

    assert response.status_code == 400
    assert _reload(order).status == Order.Status.PENDING_PAYMENT
    assert not WebhookEvent.objects.exists()


def test_it_accepts_a_timestamp_inside_the_tolerance(order, post_webhook):
    response = post_webhook(_completed(order), timestamp=int(time.time()) - 280)

    assert response.status_code == 200
    assert _reload(order).status == Order.Status.PAID


def test_it_rejects_a_body_changed_after_signing(order, signed, client):
    from django.urls import reverse

    payload, signature = signed(_completed(order))
    tampered = payload.replace(b'"paid"', b'"PAID"')

    response = client.post(
        reverse("orders:stripe_webhook"),
        data=tampered,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )

    assert response.status_code == 400
    assert _reload(order).status == Order.Status.PENDING_PAYMENT


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"[]", b'"event"', b"\xff\xfe", b'{"id": "evt_1", "type": "x"}', b"{}"],
    ids=["broken", "array", "string", "not-utf8", "no-data", "empty"],
)
def test_it_rejects_a_signed_body_that_is_not_an_event(payload, post_webhook):
    response = post_webhook(payload)

    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


def test_it_applies_a_duplicate_delivery_once(order, post_webhook):
    event = _completed(order)

    statuses = {post_webhook(event).status_code for _ in range(20)}

    assert statuses == {200}
    assert OutboxMessage.objects.count() == 1
    assert Instance.objects.count() == 1
    assert WebhookEvent.objects.count() == 1


def test_a_second_event_for_a_paid_order_provisions_nothing(order, post_webhook):
    post_webhook(_completed(order))

    response = post_webhook(_completed(order))  # another event id, same session

    assert response.status_code == 200
    assert OutboxMessage.objects.count() == 1
    assert WebhookEvent.objects.filter(result=WebhookEvent.Result.IGNORED).count() == 1


def test_it_acknowledges_an_event_for_an_unknown_order(order, post_webhook, customer, plan):
    stranger = Order(user=customer, plan=plan)  # never saved: an id the shop does not know
    event = _completed(stranger)

    response = post_webhook(event)

    assert response.status_code == 200
    receipt = WebhookEvent.objects.get(stripe_event_id=event["id"])
    assert (receipt.result, receipt.order) == (WebhookEvent.Result.UNKNOWN_ORDER, None)
    assert _reload(order).status == Order.Status.PENDING_PAYMENT
    assert not OutboxMessage.objects.exists()


def test_it_acknowledges_a_garbage_order_reference(post_webhook, order):
    event = _completed(
        order, client_reference_id="not-a-uuid", metadata={}, id="cs_x", subscription="sub_x"
    )

    assert post_webhook(event).status_code == 200
    assert WebhookEvent.objects.get().result == WebhookEvent.Result.UNKNOWN_ORDER


def test_it_acknowledges_an_unknown_event_type(post_webhook, order):
    event = stripe_event("customer.created", {"id": "cus_1", "object": "customer"})

    response = post_webhook(event)

    assert response.status_code == 200
    assert WebhookEvent.objects.get().result == WebhookEvent.Result.UNHANDLED_TYPE
    assert _reload(order).status == Order.Status.PENDING_PAYMENT


def test_it_waits_for_an_async_payment(order, post_webhook):
    post_webhook(_completed(order, payment_status="unpaid"))
    assert _reload(order).status == Order.Status.PENDING_PAYMENT
    assert _reload(order).stripe_checkout_session_id  # recorded for the follow-up event

    post_webhook(stripe_event("checkout.session.async_payment_succeeded", checkout_session(order)))

    assert _reload(order).status == Order.Status.PAID
    assert OutboxMessage.objects.count() == 1


def test_a_failed_async_payment_cancels_the_order(order, post_webhook):
    post_webhook(_completed(order, payment_status="unpaid"))

    post_webhook(stripe_event("checkout.session.async_payment_failed", checkout_session(order)))

    order = _reload(order)
    assert order.status == Order.Status.CANCELLED
    assert order.cancelled_at is not None
    assert not OutboxMessage.objects.exists()


def test_an_expired_checkout_cancels_the_unpaid_order(order, post_webhook):
    post_webhook(
        stripe_event("checkout.session.expired", checkout_session(order, status="expired"))
    )

    order = _reload(order)
    assert (order.status, order.cancel_reason) == (
        Order.Status.CANCELLED,
        "Checkout expired without payment",
    )


def test_an_expired_session_does_not_touch_a_paid_order(order, post_webhook):
    post_webhook(_completed(order))

    post_webhook(stripe_event("checkout.session.expired", checkout_session(order)))

    assert _reload(order).status == Order.Status.PAID


def test_invoice_paid_before_the_session_event_provisions_once(order, post_webhook):
    post_webhook(stripe_event("invoice.paid", invoice(order)))
    order = _reload(order)
    assert order.status == Order.Status.PAID
    assert order.stripe_subscription_id

    post_webhook(_completed(order))

    order = _reload(order)
    assert order.stripe_checkout_session_id  # filled in by the late session event
    assert OutboxMessage.objects.filter(routing_key="create-vm").count() == 1
    assert Instance.objects.count() == 1


def test_invoice_paid_is_matched_by_subscription_id_without_metadata(order, post_webhook):
    post_webhook(_completed(order))
    Order.objects.filter(pk=order.pk).update(status=Order.Status.PAST_DUE)

    post_webhook(stripe_event("invoice.paid", invoice(order, metadata=False)))

    # No instance event yet: the instance is requested, so the order is back to paid.
    assert _reload(order).status == Order.Status.PAID


def test_invoice_paid_for_an_unknown_subscription_is_acknowledged(order, post_webhook):
    event = stripe_event("invoice.paid", invoice(order, subscription="sub_other", metadata=False))

    assert post_webhook(event).status_code == 200
    assert WebhookEvent.objects.get().result == WebhookEvent.Result.UNKNOWN_ORDER
    assert _reload(order).status == Order.Status.PENDING_PAYMENT


def test_a_failed_renewal_makes_the_order_past_due_and_a_payment_restores_it(order, post_webhook):
    post_webhook(_completed(order))
    Instance.objects.filter(order=order).update(status=Instance.Status.READY)
    Order.objects.filter(pk=order.pk).update(status=Order.Status.READY)

    post_webhook(stripe_event("invoice.payment_failed", invoice(order)))
    assert _reload(order).status == Order.Status.PAST_DUE

    post_webhook(stripe_event("invoice.paid", invoice(order)))
    assert _reload(order).status == Order.Status.READY
    assert OutboxMessage.objects.count() == 1  # no second VM


def test_a_failed_first_invoice_leaves_the_order_awaiting_payment(order, post_webhook):
    post_webhook(stripe_event("invoice.payment_failed", invoice(order)))

    assert _reload(order).status == Order.Status.PENDING_PAYMENT
    assert WebhookEvent.objects.get().result == WebhookEvent.Result.IGNORED


def test_subscription_deleted_deletes_the_vm(order, post_webhook):
    post_webhook(_completed(order))

    post_webhook(stripe_event("customer.subscription.deleted", subscription(order)))

    order = _reload(order)
    assert order.status == Order.Status.DELETING
    assert order.cancelled_at is not None
    assert order.instance.status == Instance.Status.DELETING
    delete = OutboxMessage.objects.get(routing_key="delete-vm")
    assert delete.body == {
        "version": 1,
        "command": "delete-vm",
        "options": {"vm-id": str(order.instance.public_id)},
    }


def test_subscription_deleted_twice_asks_for_deletion_once(order, post_webhook):
    post_webhook(_completed(order))
    for _ in range(2):
        post_webhook(stripe_event("customer.subscription.deleted", subscription(order)))

    assert OutboxMessage.objects.filter(routing_key="delete-vm").count() == 1


def test_subscription_deleted_before_the_payment_event_never_provisions(order, post_webhook):
    post_webhook(stripe_event("customer.subscription.deleted", subscription(order)))
    assert _reload(order).status == Order.Status.CANCELLED

    post_webhook(_completed(order))

    order = _reload(order)
    assert order.status == Order.Status.CANCELLED
    assert not Instance.objects.exists()
    assert not OutboxMessage.objects.exists()
    late = WebhookEvent.objects.get(type="checkout.session.completed")
    assert (late.result, "refund" in late.detail) == (WebhookEvent.Result.PROCESSED, True)
    # Offline (no Stripe keys in the test settings): recorded refunded, no Stripe call.
    assert (order.refund_status, order.stripe_refund_id) == ("refunded", "")
    assert order.refunded_at is not None


def test_process_webhook_raises_a_specific_error_for_a_bad_signature(order):
    payload = json.dumps(_completed(order)).encode()

    with pytest.raises(WebhookError):
        process_webhook(payload=payload, signature=stripe_signature(payload, secret="whsec_x"))


def test_it_never_logs_the_vm_password(order, post_webhook, caplog):
    caplog.set_level("DEBUG")

    post_webhook(_completed(order))

    password = _reload(order).instance.admin_password
    assert "event=provisioning_requested" in caplog.text
    assert password not in caplog.text


# -- a payment for an order that had ended: refunded, subscription cancelled ------------------

REFUND_CREATE = "stripe.RefundService.create"
SUBSCRIPTION_CANCEL = "stripe.SubscriptionService.cancel"
INVOICE_PAYMENTS = "stripe.InvoicePaymentService.list"


def _stripe_object(data: dict) -> stripe.StripeObject:
    """What the stripe library returns for a response body (the mock replaces only the HTTP)."""
    return stripe.StripeObject.construct_from(data, "sk_test_warren")


@pytest.fixture
def stripe_api(settings):
    """Stripe keys set, and Stripe's servers answering as for a paid subscription invoice."""
    settings.STRIPE_SECRET_KEY = "sk_test_warren"
    payments = _stripe_object(
        {
            "object": "list",
            "data": [
                {
                    "object": "invoice_payment",
                    "status": "paid",
                    "payment": {"type": "payment_intent", "payment_intent": "pi_test_first"},
                }
            ],
        }
    )
    with (
        mock.patch(INVOICE_PAYMENTS, return_value=payments) as invoice_payments,
        mock.patch(REFUND_CREATE, return_value=_stripe_object({"id": "re_test_1"})) as refund,
        mock.patch(SUBSCRIPTION_CANCEL) as cancel,
    ):
        yield SimpleNamespace(refund=refund, cancel=cancel, invoice_payments=invoice_payments)


def _cancelled_before_payment(order: Order) -> Order:
    order.move_to(Order.Status.CANCELLED, cancelled_at=timezone.now(), cancel_reason="customer")
    return order


def _subscription_session(order: Order, **overrides: object) -> dict:
    # Subscription mode: no payment intent on the session, its first invoice instead.
    return checkout_session(order, payment_intent=None, invoice="in_test_first", **overrides)


def _paid_invoice(order: Order, **overrides: object) -> dict:
    return {**invoice(order), "id": "in_test_first", **overrides}


@pytest.mark.parametrize(
    "event",
    [
        lambda order: stripe_event("checkout.session.completed", _subscription_session(order)),
        lambda order: stripe_event(
            "checkout.session.async_payment_succeeded", _subscription_session(order)
        ),
        lambda order: stripe_event("invoice.paid", _paid_invoice(order)),
    ],
    ids=["session-completed", "async-payment-succeeded", "invoice-paid"],
)
def test_a_payment_for_a_cancelled_order_is_refunded_and_the_subscription_cancelled(
    order, post_webhook, stripe_api, event
):
    _cancelled_before_payment(order)

    response = post_webhook(event(order))

    assert response.status_code == 200
    sub = f"sub_test_{order.public_id.hex[:16]}"
    stripe_api.cancel.assert_called_once_with(sub)
    stripe_api.invoice_payments.assert_called_once_with(
        {"invoice": "in_test_first", "status": "paid"}
    )
    (params, options), _ = stripe_api.refund.call_args
    assert params["payment_intent"] == "pi_test_first"
    assert options == {"idempotency_key": f"refund-{order.public_id}"}
    order = _reload(order)
    assert (order.status, order.refund_status, order.stripe_refund_id) == (
        "cancelled",
        "refunded",
        "re_test_1",
    )
    assert order.refunded_at is not None
    assert not Instance.objects.exists()
    assert not OutboxMessage.objects.exists()


def test_a_payment_refunds_once_however_often_and_by_whichever_event_it_arrives(
    order, post_webhook, stripe_api
):
    _cancelled_before_payment(order)
    completed = stripe_event("checkout.session.completed", _subscription_session(order))

    for _ in range(3):
        post_webhook(completed)
    post_webhook(stripe_event("invoice.paid", _paid_invoice(order)))  # the same payment

    assert stripe_api.refund.call_count == 1
    assert _reload(order).stripe_refund_id == "re_test_1"


def test_a_payment_intent_on_the_event_is_refunded_directly(order, post_webhook, stripe_api):
    _cancelled_before_payment(order)

    post_webhook(stripe_event("invoice.paid", _paid_invoice(order, payment_intent="pi_test_old")))

    stripe_api.invoice_payments.assert_not_called()
    assert stripe_api.refund.call_args.args[0]["payment_intent"] == "pi_test_old"


def test_a_stripe_error_during_the_refund_leaves_it_pending_for_staff(
    order, post_webhook, stripe_api
):
    _cancelled_before_payment(order)
    stripe_api.refund.side_effect = stripe.APIConnectionError("Stripe unreachable")

    response = post_webhook(
        stripe_event("checkout.session.completed", _subscription_session(order))
    )

    assert response.status_code == 200  # the fact is on record; a redelivery would add nothing
    order = _reload(order)
    assert (order.refund_status, order.refund_of) == ("pending", "in_test_first")
    assert "APIConnectionError" in order.refund_error
    assert order.refunded_at is None

    stripe_api.refund.side_effect = None  # Stripe is back; staff retry (the admin action)
    assert settle_refund(order=order) is True
    order = _reload(order)
    assert (order.refund_status, order.stripe_refund_id, order.refund_error) == (
        "refunded",
        "re_test_1",
        "",
    )


def test_a_renewal_charged_after_the_order_was_deleted_is_refunded(order, post_webhook, stripe_api):
    post_webhook(_completed(order))
    Order.objects.filter(pk=order.pk).update(status="deleted", cancelled_at=timezone.now())

    post_webhook(
        stripe_event("invoice.paid", _paid_invoice(order, billing_reason="subscription_cycle"))
    )

    assert _reload(order).refund_status == "refunded"
    assert stripe_api.refund.call_count == 1


def test_the_payment_that_paid_a_deleted_order_arriving_again_is_not_refunded(
    order, post_webhook, stripe_api
):
    # invoice.paid paid the order, the customer used and cancelled it; the session event is late.
    post_webhook(stripe_event("invoice.paid", _paid_invoice(order)))
    Order.objects.filter(pk=order.pk).update(status="deleted", cancelled_at=timezone.now())

    post_webhook(stripe_event("checkout.session.completed", _subscription_session(order)))

    assert _reload(order).refund_status == ""
    stripe_api.refund.assert_not_called()


def test_the_database_keeps_one_refund_per_order(order, customer, plan):
    other = Order.objects.create(user=customer, plan=plan)
    now = timezone.now()
    done = {"refund_status": "refunded", "refund_requested_at": now, "refunded_at": now}
    Order.objects.filter(pk=order.pk).update(stripe_refund_id="re_1", **done)

    with pytest.raises(IntegrityError), transaction.atomic():
        Order.objects.filter(pk=other.pk).update(stripe_refund_id="re_1", **done)
    with pytest.raises(IntegrityError), transaction.atomic():
        Order.objects.filter(pk=other.pk).update(
            refund_status="refunded", refund_requested_at=now, refunded_at=None
        )
