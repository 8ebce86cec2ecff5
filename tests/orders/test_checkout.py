"""Starting a checkout, and cancelling: Stripe's API mocked at the API call, nothing else."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
import stripe
from django.db import transaction
from django.urls import reverse

from orders import checkout
from orders.checkout import CheckoutError, start_checkout
from orders.models import Order, OutboxMessage
from orders.provisioning import cancel_order, request_provisioning

pytestmark = pytest.mark.django_db

SESSION_CREATE = "stripe.checkout.SessionService.create"
SUBSCRIPTION_CANCEL = "stripe.SubscriptionService.cancel"


@pytest.fixture
def stripe_keys(settings):
    settings.STRIPE_SECRET_KEY = "sk_test_warren"
    settings.SITE_URL = "https://shop.example"


def test_without_stripe_keys_it_sends_the_customer_to_the_offline_page(customer, plan, settings):
    settings.STRIPE_SECRET_KEY = ""

    with mock.patch(SESSION_CREATE) as create:
        order, url = start_checkout(user=customer, plan=plan)

    assert order.status == Order.Status.PENDING_PAYMENT
    assert url == reverse("orders:offline_checkout", args=[order.public_id])
    create.assert_not_called()


def test_it_creates_a_subscription_checkout_session(customer, plan, stripe_keys):
    plan.stripe_price_id = "price_123"
    plan.save()
    session = SimpleNamespace(id="cs_test_abc", url="https://checkout.stripe.com/c/pay/cs_test_abc")

    with mock.patch(SESSION_CREATE, return_value=session) as create:
        order, url = start_checkout(user=customer, plan=plan)

    assert url == session.url
    assert Order.objects.get(pk=order.pk).stripe_checkout_session_id == "cs_test_abc"
    (params, options), _ = create.call_args
    ref = str(order.public_id)
    assert params["mode"] == "subscription"
    assert params["line_items"] == [{"price": "price_123", "quantity": 1}]
    assert params["client_reference_id"] == ref
    assert params["metadata"] == {"order_id": ref}
    assert params["subscription_data"] == {"metadata": {"order_id": ref}}
    assert params["success_url"] == f"https://shop.example/orders/{ref}/success/"
    assert params["cancel_url"] == f"https://shop.example/orders/{ref}/checkout-cancelled/"
    assert options == {"idempotency_key": f"checkout-{ref}"}


def test_stripe_calls_have_a_timeout(stripe_keys):
    with mock.patch("stripe.RequestsClient", wraps=stripe.RequestsClient) as client:
        checkout._stripe_client()

    assert client.call_args.kwargs["timeout"] == checkout.STRIPE_TIMEOUT


def test_a_stripe_outage_leaves_an_unpaid_order_and_a_clear_error(customer, plan, stripe_keys):
    with mock.patch(SESSION_CREATE, side_effect=stripe.APIConnectionError("no route")):
        with pytest.raises(CheckoutError):
            start_checkout(user=customer, plan=plan)

    order = Order.objects.get()
    assert (order.status, order.stripe_checkout_session_id) == ("pending_payment", "")


def test_a_session_without_a_payment_page_is_a_clear_error(customer, plan, stripe_keys):
    session = SimpleNamespace(id="cs_test_embedded", url=None)  # what an embedded session returns

    with mock.patch(SESSION_CREATE, return_value=session):
        with pytest.raises(CheckoutError):
            start_checkout(user=customer, plan=plan)

    order = Order.objects.get()
    assert (order.status, order.stripe_checkout_session_id) == ("pending_payment", "")


def _paid_with_subscription(order: Order) -> Order:
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        request_provisioning(order=locked, stripe_subscription_id="sub_123")
    return Order.objects.get(pk=order.pk)


def test_cancelling_cancels_the_stripe_subscription_first(order, stripe_keys):
    order = _paid_with_subscription(order)

    with mock.patch(SUBSCRIPTION_CANCEL) as cancel:
        cancelled = cancel_order(order=order, reason="customer")

    cancel.assert_called_once_with("sub_123")
    assert cancelled.status == Order.Status.DELETING
    assert OutboxMessage.objects.filter(routing_key="delete-vm").count() == 1


def test_if_stripe_refuses_the_cancellation_nothing_changes(order, stripe_keys):
    order = _paid_with_subscription(order)

    with mock.patch(SUBSCRIPTION_CANCEL, side_effect=stripe.APIConnectionError("down")):
        with pytest.raises(CheckoutError):
            cancel_order(order=order, reason="customer")

    assert Order.objects.get(pk=order.pk).status == Order.Status.PAID
    assert not OutboxMessage.objects.filter(routing_key="delete-vm").exists()


def test_a_subscription_already_gone_at_stripe_still_cancels(order, stripe_keys):
    order = _paid_with_subscription(order)
    gone = stripe.InvalidRequestError("No such subscription", param="id", code="resource_missing")

    with mock.patch(SUBSCRIPTION_CANCEL, side_effect=gone):
        cancelled = cancel_order(order=order, reason="customer")

    assert cancelled.status == Order.Status.DELETING


def test_cancelling_an_unpaid_order_makes_no_stripe_call(order, stripe_keys):
    with mock.patch(SUBSCRIPTION_CANCEL) as cancel:
        cancelled = cancel_order(order=order, reason="customer")

    cancel.assert_not_called()
    assert cancelled.status == Order.Status.CANCELLED
    assert not OutboxMessage.objects.exists()
