"""Starting a checkout, and cancelling: Stripe's API mocked at the API call, nothing else."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
import stripe
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from orders.billing import checkout
from orders.billing.cancellation import cancel_order
from orders.billing.checkout import CheckoutError, request_refund, settle_refund, start_checkout
from orders.core.provisioning import request_provisioning
from orders.models import Order, OutboxMessage

pytestmark = pytest.mark.django_db

SESSION_CREATE = "stripe.checkout.SessionService.create"
SUBSCRIPTION_CANCEL = "stripe.SubscriptionService.cancel"
SESSION_EXPIRE = "stripe.checkout.SessionService.expire"
REFUND_CREATE = "stripe.RefundService.create"
INVOICE_PAYMENTS = "stripe.InvoicePaymentService.list"


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


def test_unpaid_orders_per_customer_are_limited(customer, plan, settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PENDING_ORDERS_PER_CUSTOMER = 2
    first, _ = start_checkout(user=customer, plan=plan)
    start_checkout(user=customer, plan=plan)

    with pytest.raises(CheckoutError, match="You have 2 unpaid orders"):
        start_checkout(user=customer, plan=plan)

    assert Order.objects.filter(user=customer).count() == 2
    cancel_order(order=first, reason="customer")  # an unpaid order cancelled no longer counts
    start_checkout(user=customer, plan=plan)
    assert Order.objects.filter(user=customer, status=Order.Status.PENDING_PAYMENT).count() == 2


def test_the_unpaid_order_limit_is_per_customer(customer, plan, settings, django_user_model):
    settings.STRIPE_SECRET_KEY = ""
    settings.PENDING_ORDERS_PER_CUSTOMER = 1
    start_checkout(user=customer, plan=plan)
    other = django_user_model.objects.create_user("bert", "bert@example.com", "pw-bert-123456")

    order, _ = start_checkout(user=other, plan=plan)

    assert order.user == other


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
    # No checkout session (offline order, or Stripe failed to create one): nothing to expire.
    with mock.patch(SUBSCRIPTION_CANCEL) as cancel, mock.patch(SESSION_EXPIRE) as expire:
        cancelled = cancel_order(order=order, reason="customer")

    cancel.assert_not_called()
    expire.assert_not_called()
    assert cancelled.status == Order.Status.CANCELLED
    assert not OutboxMessage.objects.exists()


def _with_open_session(order: Order) -> Order:
    Order.objects.filter(pk=order.pk).update(stripe_checkout_session_id="cs_test_open")
    return Order.objects.get(pk=order.pk)


def test_cancelling_an_unpaid_order_expires_its_checkout_session(order, stripe_keys):
    order = _with_open_session(order)

    with mock.patch(SESSION_EXPIRE) as expire:
        cancelled = cancel_order(order=order, reason="customer")

    expire.assert_called_once_with("cs_test_open")
    assert cancelled.status == Order.Status.CANCELLED


@pytest.mark.parametrize(
    "error",
    [
        stripe.InvalidRequestError(
            'Only Checkout Sessions with a status in ["open"] can be expired.', param=None
        ),
        stripe.APIConnectionError("Stripe unreachable"),
    ],
    ids=["already-complete-or-expired", "stripe-down"],
)
def test_a_session_that_cannot_be_expired_does_not_stop_the_cancellation(
    order, stripe_keys, error, caplog
):
    # Complete or expired already: nothing to do. Stripe down: a payment that still arrives is
    # refunded (test_webhooks), so the cancellation goes on.
    order = _with_open_session(order)

    with mock.patch(SESSION_EXPIRE, side_effect=error):
        cancelled = cancel_order(order=order, reason="customer")

    assert Order.objects.get(pk=order.pk).status == Order.Status.CANCELLED
    assert cancelled.status == Order.Status.CANCELLED


def test_a_paid_order_is_not_expired_but_its_subscription_cancelled(order, stripe_keys):
    order = _paid_with_subscription(_with_open_session(order))

    with mock.patch(SUBSCRIPTION_CANCEL), mock.patch(SESSION_EXPIRE) as expire:
        cancel_order(order=order, reason="customer")

    expire.assert_not_called()


def _pending_refund(order: Order, payment: str) -> Order:
    Order.objects.filter(pk=order.pk).update(status="cancelled", cancelled_at=timezone.now())
    with transaction.atomic():
        assert request_refund(order=Order.objects.get(pk=order.pk), payment=payment)
    return Order.objects.get(pk=order.pk)


def test_an_invoice_without_a_paid_payment_stays_pending_with_the_reason(order, stripe_keys):
    order = _pending_refund(order, "in_test_unpaid")
    empty = stripe.StripeObject.construct_from({"object": "list", "data": []}, "sk_test_warren")

    with mock.patch(INVOICE_PAYMENTS, return_value=empty), mock.patch(REFUND_CREATE) as refund:
        assert settle_refund(order=order) is False

    refund.assert_not_called()
    order = Order.objects.get(pk=order.pk)
    assert order.refund_status == "pending"
    assert "in_test_unpaid" in order.refund_error


def test_a_charge_refunded_at_stripe_already_counts_as_refunded(order, stripe_keys):
    order = _pending_refund(order, "ch_test_1")
    already = stripe.InvalidRequestError(
        "Charge ch_test_1 has already been refunded.", param=None, code="charge_already_refunded"
    )

    with mock.patch(REFUND_CREATE, side_effect=already):
        assert settle_refund(order=order) is True

    assert Order.objects.get(pk=order.pk).refund_status == "refunded"


def test_a_refund_is_settled_once(order, stripe_keys):
    order = _pending_refund(order, "pi_test_1")
    done = stripe.StripeObject.construct_from({"id": "re_test_1"}, "sk_test_warren")

    with mock.patch(REFUND_CREATE, return_value=done) as refund:
        assert settle_refund(order=order) is True
        assert settle_refund(order=order) is True  # staff click retry on a refunded order

    refund.assert_called_once()
    assert refund.call_args.args[0]["payment_intent"] == "pi_test_1"


def test_an_answer_of_an_unknown_shape_keeps_the_refund_pending(order, stripe_keys):
    order = _pending_refund(order, "in_test_odd")
    odd = stripe.StripeObject.construct_from(
        {"object": "list", "data": [{"object": "invoice_payment"}]}, "sk_test_warren"
    )

    with mock.patch(INVOICE_PAYMENTS, return_value=odd):
        assert settle_refund(order=order) is False

    order = Order.objects.get(pk=order.pk)
    assert order.refund_status == "pending"
    assert "unexpected answer" in order.refund_error
