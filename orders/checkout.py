"""Starting a purchase, and every call the shop makes to Stripe's API (all with a timeout).

The webhook path (orders/webhooks.py) makes no Stripe API call at all: it trusts the signed event.
"""

from __future__ import annotations

import logging

import stripe
from django.conf import settings
from django.contrib.auth.models import User
from django.urls import reverse

from orders.models import Order
from store.models import Plan

log = logging.getLogger(__name__)

STRIPE_TIMEOUT = 10.0  # seconds, per API call


class CheckoutError(Exception):
    """Stripe could not start the checkout; the order stays pending_payment and unpaid."""


def _stripe_client() -> stripe.StripeClient:
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        http_client=stripe.RequestsClient(timeout=STRIPE_TIMEOUT),
        max_network_retries=1,
    )


def start_checkout(*, user: User, plan: Plan) -> tuple[Order, str]:
    """Create the order (pending_payment) and return where to send the customer to pay."""
    order = Order.objects.create(user=user, plan=plan)
    log.info("event=order_created order_id=%s plan=%s", order.public_id, plan.slug)
    if not settings.STRIPE_SECRET_KEY:
        return order, reverse("orders:offline_checkout", args=[order.public_id])

    order_ref = str(order.public_id)
    site = settings.SITE_URL.rstrip("/")
    params: stripe.params.checkout.SessionCreateParams = {
        "mode": "subscription",
        "line_items": [{"price": plan.stripe_price_id, "quantity": 1}],
        "client_reference_id": order_ref,
        "metadata": {"order_id": order_ref},
        # The subscription (and so its invoices) carry the order id too: invoice.paid and
        # customer.subscription.deleted can find the order even before checkout.session.completed.
        "subscription_data": {"metadata": {"order_id": order_ref}},
        "success_url": site + reverse("orders:success", args=[order.public_id]),
        "cancel_url": site + reverse("orders:cancelled", args=[order.public_id]),
    }
    log.info("event=stripe_checkout_creating order_id=%s", order.public_id)
    try:
        session = _stripe_client().v1.checkout.sessions.create(
            params, {"idempotency_key": f"checkout-{order_ref}"}
        )
    except stripe.StripeError as exc:
        log.error(
            "event=stripe_checkout_failed order_id=%s error=%s",
            order.public_id,
            type(exc).__name__,
        )
        raise CheckoutError("Payment provider unavailable, please try again") from exc
    if not session.url:  # only embedded sessions have none; this one is hosted
        log.error("event=stripe_checkout_without_url order_id=%s", order.public_id)
        raise CheckoutError("Payment provider unavailable, please try again")
    Order.objects.filter(pk=order.pk).update(stripe_checkout_session_id=session.id)
    order.stripe_checkout_session_id = session.id
    log.info("event=stripe_checkout_created order_id=%s session_id=%s", order.public_id, session.id)
    return order, session.url


def cancel_stripe_subscription(*, order: Order) -> None:
    """Cancel the order's subscription at Stripe. Raises CheckoutError when Stripe refuses."""
    log.info(
        "event=stripe_subscription_cancelling order_id=%s subscription=%s",
        order.public_id,
        order.stripe_subscription_id,
    )
    try:
        _stripe_client().v1.subscriptions.cancel(order.stripe_subscription_id)
    except stripe.InvalidRequestError as exc:
        if exc.code != "resource_missing":
            raise CheckoutError("Could not cancel the subscription") from exc
        # Already gone at Stripe: nothing to cancel there.
    except stripe.StripeError as exc:
        log.error(
            "event=stripe_subscription_cancel_failed order_id=%s error=%s",
            order.public_id,
            type(exc).__name__,
        )
        raise CheckoutError("Payment provider unavailable, please try again") from exc
    log.info("event=stripe_subscription_cancelled order_id=%s", order.public_id)
