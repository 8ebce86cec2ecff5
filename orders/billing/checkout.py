"""Starting a purchase, and every call the shop makes to Stripe's API (all with a timeout).

The webhook's transaction (orders/billing/webhooks.py) makes no Stripe API call: it trusts the
signed event. The one call on the webhook path is `settle_refund`, after that transaction committed,
for a payment that arrived for an order that had already ended.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import stripe
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from orders.core import activity
from orders.models import Activity, Order
from store.models import Plan

log = logging.getLogger(__name__)

STRIPE_TIMEOUT = 10.0  # seconds, per API call


class CheckoutError(Exception):
    """The checkout could not start (too many unpaid orders: no order made; or Stripe refused:
    the order stays pending_payment and unpaid). The message is for the customer."""


def _stripe_client() -> stripe.StripeClient:
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        http_client=stripe.RequestsClient(timeout=STRIPE_TIMEOUT),
        max_network_retries=1,
    )


def start_checkout(*, user: User, plan: Plan) -> tuple[Order, str]:
    """Create the order (pending_payment) and return where to send the customer to pay. At most
    settings.PENDING_ORDERS_PER_CUSTOMER unpaid orders per customer: each is a row, and with
    Stripe a checkout session, made for nothing."""
    with transaction.atomic():
        # Race: two checkouts at once (tabs, a script) would each count one unpaid order fewer
        # than the limit and both insert; the customer's row lock makes them take turns.
        User.objects.select_for_update().filter(pk=user.pk).first()
        unpaid = Order.objects.filter(user=user, status=Order.Status.PENDING_PAYMENT).count()
        if unpaid >= settings.PENDING_ORDERS_PER_CUSTOMER:
            log.warning(
                "event=checkout_refused_unpaid_orders user_id=%s unpaid=%s", user.pk, unpaid
            )
            raise CheckoutError(
                f"You have {unpaid} unpaid orders: pay for one or cancel it on your orders page "
                "before starting another."
            )
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


def expire_checkout_session(*, order: Order) -> None:
    """Close the order's Checkout Session at Stripe, so the customer can no longer pay it.

    Best effort, never raises: a session already completed or expired is what we want (Stripe
    answers InvalidRequestError), and if Stripe is unreachable the session stays open until its
    own expiry (24 h) — a payment arriving meanwhile finds the order cancelled and is refunded.
    """
    session_id = order.stripe_checkout_session_id
    try:
        _stripe_client().v1.checkout.sessions.expire(session_id)
    except stripe.InvalidRequestError as exc:
        log.info(
            "event=stripe_checkout_not_open order_id=%s session_id=%s code=%s",
            order.public_id,
            session_id,
            exc.code or "-",
        )
        return
    except stripe.StripeError as exc:
        log.warning(
            "event=stripe_checkout_expire_failed order_id=%s session_id=%s error=%s",
            order.public_id,
            session_id,
            type(exc).__name__,
        )
        return
    log.info("event=stripe_checkout_expired order_id=%s session_id=%s", order.public_id, session_id)


# -- refunds: a payment for an order that had already ended ----------------------------------

Refund = Order.RefundStatus


def request_refund(*, order: Order, payment: str) -> bool:
    """Record that `payment` (a Stripe pi_/ch_/in_ id, or "" offline) must be refunded. Runs in
    the webhook's transaction, so the fact commits with the event's receipt. One refund per order:
    compare-and-set from "no refund", so a replayed or a second event for the same payment (the
    session and its invoice) records nothing. True when this call recorded it."""
    now = timezone.now()
    recorded = Order.objects.filter(pk=order.pk, refund_status=Refund.NONE).update(
        refund_status=Refund.PENDING, refund_of=payment, refund_requested_at=now, updated_at=now
    )
    if recorded:
        order.refund_status, order.refund_of, order.refund_requested_at = (
            Refund.PENDING,
            payment,
            now,
        )
        log.warning(
            "event=refund_requested order_id=%s status=%s payment=%s",
            order.public_id,
            order.status,
            payment or "-",
        )
    return bool(recorded)


def settle_refund(*, order: Order) -> bool:
    """Carry out a pending refund: end the subscription and refund the payment at Stripe, then
    record Stripe's refund id. True when the order is refunded (now or before).

    Without Stripe keys (offline payments: no money moved) it is recorded as refunded with no
    Stripe call. A Stripe error leaves it pending with the error recorded, for staff to retry
    (admin action "Retry pending refunds"); nothing here raises for Stripe trouble. Safe to run
    twice at once: Stripe's idempotency key makes both calls one refund, and the compare-and-set
    on "pending" records it once.
    """
    order = Order.objects.get(pk=order.pk)
    if order.refund_status != Refund.PENDING:
        return order.refund_status == Refund.REFUNDED
    refund_id = ""
    if settings.STRIPE_SECRET_KEY:
        try:
            refund_id = _refund_at_stripe(order)
        except CheckoutError as exc:
            Order.objects.filter(pk=order.pk, refund_status=Refund.PENDING).update(
                refund_error=str(exc)[:255]
            )
            log.error(
                "event=refund_failed order_id=%s payment=%s error=%r",
                order.public_id,
                order.refund_of or "-",
                str(exc),
            )
            return False
    now = timezone.now()
    settled = Order.objects.filter(pk=order.pk, refund_status=Refund.PENDING).update(
        refund_status=Refund.REFUNDED,
        stripe_refund_id=refund_id,
        refunded_at=now,
        refund_error="",
        updated_at=now,
    )
    if settled:  # a racing settle recorded it already otherwise
        activity.record(
            order=order,
            kind=Activity.Kind.REFUNDED,
            message="A payment that arrived after the order had ended was refunded.",
        )
    log.info(
        "event=refunded order_id=%s payment=%s refund=%s",
        order.public_id,
        order.refund_of or "-",
        refund_id or "-",
    )
    return True


def _refund_at_stripe(order: Order) -> str:
    """The subscription first (no further month is charged), then the refund. Stripe's id."""
    if order.stripe_subscription_id:
        cancel_stripe_subscription(order=order)
    if not order.refund_of:
        raise CheckoutError("the payment event named no payment to refund: refund it at Stripe")
    client = _stripe_client()
    try:
        params = _refund_target(client, order.refund_of)
        refund = client.v1.refunds.create(
            cast(Any, {**params, "metadata": {"order_id": str(order.public_id)}}),
            # One refund per order even if two settles race or a retry follows a lost answer.
            {"idempotency_key": f"refund-{order.public_id}"},
        )
    except stripe.InvalidRequestError as exc:
        if exc.code == "charge_already_refunded":
            return ""  # refunded at Stripe already (e.g. by staff in the dashboard)
        raise CheckoutError(f"Stripe refused the refund: {exc.code or type(exc).__name__}") from exc
    except stripe.StripeError as exc:
        raise CheckoutError(f"Stripe unavailable: {type(exc).__name__}") from exc
    except (KeyError, TypeError, AttributeError) as exc:  # an unknown answer shape: keep it pending
        raise CheckoutError(f"unexpected answer from Stripe: {type(exc).__name__} {exc}") from exc
    return str(refund["id"])


def _refund_target(client: stripe.StripeClient, payment: str) -> dict[str, str]:
    """Refund parameters for a payment intent, a charge, or an invoice (its paid payment)."""
    if payment.startswith("pi_"):
        return {"payment_intent": payment}
    if payment.startswith(("ch_", "py_")):
        return {"charge": payment}
    if payment.startswith("in_"):
        # A subscription's Checkout Session names its first invoice, not a payment intent.
        paid = client.v1.invoice_payments.list({"invoice": payment, "status": "paid"})
        for invoice_payment in paid.data:
            target = invoice_payment["payment"]  # a StripeObject: no .get(), but `in` works
            for kind in ("payment_intent", "charge"):
                if kind in target and target[kind]:
                    return {kind: _stripe_id(target[kind])}
        raise CheckoutError(f"invoice {payment} has no paid payment to refund")
    raise CheckoutError(f"cannot refund a payment of this kind: {payment[:40]}")


def _stripe_id(value: object) -> str:
    return value if isinstance(value, str) else value["id"]  # type: ignore[index]


# -- the console: plan changes and the billing portal -----------------------------------------


def change_subscription_price(*, order: Order, price_id: str, idempotency_key: str) -> None:
    """Move the order's subscription to `price_id` with proration (Stripe bills or credits the
    difference for the rest of the period). Raises CheckoutError when Stripe refuses or is down.
    The same idempotency_key makes a repeated call one change at Stripe."""
    client = _stripe_client()
    sub_id = order.stripe_subscription_id
    log.info(
        "event=stripe_price_changing order_id=%s subscription=%s price=%s",
        order.public_id,
        sub_id,
        price_id,
    )
    try:
        subscription = client.v1.subscriptions.retrieve(sub_id)
        item_id = subscription["items"]["data"][0]["id"]
        client.v1.subscriptions.update(
            sub_id,
            {
                "items": [{"id": item_id, "price": price_id}],
                "proration_behavior": "create_prorations",
            },
            {"idempotency_key": idempotency_key},
        )
    except stripe.StripeError as exc:
        log.error(
            "event=stripe_price_change_failed order_id=%s error=%s",
            order.public_id,
            type(exc).__name__,
        )
        raise CheckoutError("The payment provider did not accept the change") from exc
    except (KeyError, IndexError, TypeError) as exc:  # a subscription without an item
        log.error("event=stripe_price_change_failed order_id=%s error=no_item", order.public_id)
        raise CheckoutError("The subscription has no price to change") from exc
    log.info("event=stripe_price_changed order_id=%s price=%s", order.public_id, price_id)


def billing_portal_url(*, order: Order, return_url: str) -> str:
    """A Stripe customer portal session for the order's customer (cards, invoices)."""
    try:
        session = _stripe_client().v1.billing_portal.sessions.create(
            {"customer": order.stripe_customer_id, "return_url": return_url}
        )
    except stripe.StripeError as exc:
        log.error(
            "event=stripe_portal_failed order_id=%s error=%s", order.public_id, type(exc).__name__
        )
        raise CheckoutError("Payment provider unavailable, please try again") from exc
    return str(session.url)
