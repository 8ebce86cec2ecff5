"""Cancelling an order: the money side first (Stripe), then the order and its VM.

Here and not in orders/core/provisioning.py because it calls Stripe (orders/billing/checkout.py):
provisioning only writes outbox rows, and `cancel_order_locked` there is what this runs inside its
transaction (the webhooks call that one directly, inside theirs).
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from orders.billing.checkout import cancel_stripe_subscription, expire_checkout_session
from orders.core.provisioning import cancel_order_locked
from orders.models import Order


def cancel_order(*, order: Order, reason: str, cancel_subscription: bool = True) -> Order:
    """Cancel an order (customer button, staff action). Returns the order as it now is.

    With Stripe configured, the subscription is cancelled at Stripe first (money side first): if
    that call fails nothing changes here and the error propagates to the caller. Stripe then
    sends customer.subscription.deleted, which finds the order already cancelled.

    An unpaid order's Checkout Session is expired at Stripe *after* the order is cancelled here:
    from that moment a payment that still gets through finds the order cancelled and is refunded
    (webhooks), so a failed or slow expire call can cost a refund, never a charge we keep.
    """
    stripe_on = cancel_subscription and bool(settings.STRIPE_SECRET_KEY)
    if stripe_on and order.stripe_subscription_id:
        cancel_stripe_subscription(order=order)
    with transaction.atomic():
        # Race: a webhook or the event consumer may move this order concurrently; the row lock
        # serialises us with them.
        locked = Order.objects.select_for_update().get(pk=order.pk)
        was_unpaid = locked.status == Order.Status.PENDING_PAYMENT
        cancel_order_locked(order=locked, reason=reason)
    if stripe_on and was_unpaid and locked.stripe_checkout_session_id:
        expire_checkout_session(order=locked)
    return locked
