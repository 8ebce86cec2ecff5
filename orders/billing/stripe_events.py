"""One handler per Stripe event type the shop acts on, and how each finds its order.

They run inside the transaction of orders/billing/webhooks.py `process_webhook` (which verified the
signature, checked the shape and recorded the event id); each returns an `Outcome` for the receipt.
docs/orders.md lists what each out-of-order arrival does.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orders.billing.checkout import request_refund
from orders.core import activity
from orders.core.provisioning import cancel_order_locked, order_status_for, request_provisioning
from orders.models import Instance, Order, WebhookEvent

log = logging.getLogger(__name__)

Result = WebhookEvent.Result


@dataclass(frozen=True)
class Outcome:
    result: str
    order: Order | None = None
    detail: str = ""
    refund_due: bool = False  # settle the refund this event recorded, after the commit


# -- finding the order -----------------------------------------------------------------------


def _as_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None


def _id_of(value: Any) -> str:
    """A Stripe reference is an id string, or an expanded object with an id."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def _locked_order(
    *, order_ref: Any = None, session_id: str = "", subscription_id: str = ""
) -> Order | None:
    """The order, locked for the rest of the transaction (select_for_update)."""
    orders = Order.objects.select_for_update().select_related("plan")
    public_id = _as_uuid(order_ref)
    if public_id:
        order = orders.filter(public_id=public_id).first()
        if order:
            return order
    if session_id:
        order = orders.filter(stripe_checkout_session_id=session_id).first()
        if order:
            return order
    if subscription_id:
        return orders.filter(stripe_subscription_id=subscription_id).first()
    return None


def _metadata_order_ref(*objs: Any) -> Any:
    for obj in objs:
        if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
            ref = obj["metadata"].get("order_id")
            if ref:
                return ref
    return None


def _fill_stripe_ids(order: Order, **ids: str) -> None:
    """Record Stripe ids we did not know yet; never overwrite one we have."""
    fields = {name: value for name, value in ids.items() if value and not getattr(order, name)}
    if fields:
        Order.objects.filter(pk=order.pk).update(**fields)
        for name, value in fields.items():
            setattr(order, name, value)


def _fulfil(
    order: Order, *, payment: str, stripe_ids: dict[str, str], renewal: bool = False
) -> Outcome:
    """Payment is proven for `order` (locked). Provision exactly once.

    Race: checkout.session.completed and invoice.paid (or two deliveries of one of them) can
    arrive at the same moment. Both lock the order row; the second sees it paid and does nothing.

    `payment` is the Stripe payment (pi_/ch_/in_) to refund if the order has ended: one never
    paid (cancelled while the checkout was still open, or the subscription deleted first), or a
    renewal (`renewal`) charged after the order ended. The payment that paid an order which was
    later cancelled (failed, deleted) arriving again is not refunded: the customer had the VM.
    """
    if order.status == Order.Status.PENDING_PAYMENT:
        request_provisioning(order=order, **stripe_ids)
        return Outcome(Result.PROCESSED, order, "paid, VM requested")
    _fill_stripe_ids(order, **stripe_ids)
    if order.status in Order.ENDED and (order.paid_at is None or renewal):
        log.warning(
            "event=payment_for_ended_order order_id=%s status=%s", order.public_id, order.status
        )
        if request_refund(order=order, payment=payment):
            detail = f"payment for a {order.status} order: refund"
            return Outcome(Result.PROCESSED, order, detail, refund_due=True)
        detail = f"{order.status}, refund already {order.refund_status}"
        return Outcome(Result.IGNORED, order, detail)
    return Outcome(Result.IGNORED, order, f"already {order.status}")


# -- handlers: one per event type, each runs inside process_webhook's transaction -------------


def _session_ids(session: dict[str, Any]) -> dict[str, str]:
    return {
        "stripe_checkout_session_id": _id_of(session.get("id")),
        "stripe_customer_id": _id_of(session.get("customer")),
        "stripe_subscription_id": _id_of(session.get("subscription")),
    }


def _session_order(session: dict[str, Any]) -> Order | None:
    ids = _session_ids(session)
    return _locked_order(
        order_ref=session.get("client_reference_id") or _metadata_order_ref(session),
        session_id=ids["stripe_checkout_session_id"],
        subscription_id=ids["stripe_subscription_id"],
    )


def _session_payment(session: dict[str, Any]) -> str:
    """What a session's money went to: its payment intent (payment mode) or its first invoice
    (subscription mode, where payment_intent is null)."""
    return _id_of(session.get("payment_intent")) or _id_of(session.get("invoice"))


def on_checkout_session_completed(session: dict[str, Any]) -> Outcome:
    order = _session_order(session)
    if order is None:
        return Outcome(Result.UNKNOWN_ORDER, None, f"session {_id_of(session.get('id'))}")
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        # Delayed payment method: async_payment_succeeded / _failed will follow.
        _fill_stripe_ids(order, **_session_ids(session))
        return Outcome(Result.IGNORED, order, f"payment_status={session.get('payment_status')}")
    return _fulfil(order, payment=_session_payment(session), stripe_ids=_session_ids(session))


def on_async_payment_succeeded(session: dict[str, Any]) -> Outcome:
    order = _session_order(session)
    if order is None:
        return Outcome(Result.UNKNOWN_ORDER, None, f"session {_id_of(session.get('id'))}")
    return _fulfil(order, payment=_session_payment(session), stripe_ids=_session_ids(session))


def _cancel_unpaid(session: dict[str, Any], *, reason: str, detail: str) -> Outcome:
    """The checkout ended without money: cancel the order if it is still waiting for payment."""
    order = _session_order(session)
    if order is None:
        return Outcome(Result.UNKNOWN_ORDER, None, f"session {_id_of(session.get('id'))}")
    if order.status != Order.Status.PENDING_PAYMENT:
        return Outcome(Result.IGNORED, order, f"already {order.status}")
    cancel_order_locked(order=order, reason=reason)
    return Outcome(Result.PROCESSED, order, detail)


def on_async_payment_failed(session: dict[str, Any]) -> Outcome:
    outcome = _cancel_unpaid(
        session, reason="Payment failed", detail="payment failed, order cancelled"
    )
    if outcome.result == Result.PROCESSED and outcome.order is not None:
        activity.payment_failed(order=outcome.order, renewal=False)
    return outcome


def on_checkout_session_expired(session: dict[str, Any]) -> Outcome:
    return _cancel_unpaid(
        session,
        reason="Checkout expired without payment",
        detail="checkout expired, order cancelled",
    )


def _invoice_subscription(invoice: dict[str, Any]) -> tuple[str, Any]:
    """(subscription id, order ref) of an invoice, in the old and the current API shape."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    legacy = invoice.get("subscription_details") or {}
    subscription_id = _id_of(details.get("subscription")) or _id_of(invoice.get("subscription"))
    lines = (invoice.get("lines") or {}).get("data") or []
    order_ref = _metadata_order_ref(details, legacy, *lines)
    return subscription_id, order_ref


def _invoice_order(invoice: dict[str, Any]) -> Order | None:
    subscription_id, order_ref = _invoice_subscription(invoice)
    return _locked_order(order_ref=order_ref, subscription_id=subscription_id)


def on_invoice_paid(invoice: dict[str, Any]) -> Outcome:
    order = _invoice_order(invoice)
    if order is None:
        return Outcome(Result.UNKNOWN_ORDER, None, f"invoice {_id_of(invoice.get('id'))}")
    subscription_id, _ = _invoice_subscription(invoice)
    ids = {
        "stripe_subscription_id": subscription_id,
        "stripe_customer_id": _id_of(invoice.get("customer")),
    }
    if order.status == Order.Status.PAST_DUE:
        instance = Instance.objects.filter(order=order).first()
        order.move_to(order_status_for(instance) if instance else Order.Status.PAID)
        return Outcome(Result.PROCESSED, order, f"renewal paid, back to {order.status}")
    # The subscription's first invoice is proof of payment too (it may beat the session event).
    payment = (
        _id_of(invoice.get("payment_intent"))
        or _id_of(invoice.get("charge"))
        or _id_of(invoice.get("id"))
    )
    renewal = invoice.get("billing_reason") == "subscription_cycle"
    return _fulfil(order, payment=payment, stripe_ids=ids, renewal=renewal)


def on_invoice_payment_failed(invoice: dict[str, Any]) -> Outcome:
    order = _invoice_order(invoice)
    if order is None:
        return Outcome(Result.UNKNOWN_ORDER, None, f"invoice {_id_of(invoice.get('id'))}")
    if order.status in Order.IN_GOOD_STANDING:
        order.move_to(Order.Status.PAST_DUE)
        activity.payment_failed(order=order, renewal=True)
        return Outcome(Result.PROCESSED, order, "renewal failed, past due")
    # A first invoice that fails leaves the order awaiting payment; others change nothing.
    return Outcome(Result.IGNORED, order, f"already {order.status}")


def on_subscription_deleted(subscription: dict[str, Any]) -> Outcome:
    order = _locked_order(
        order_ref=_metadata_order_ref(subscription), subscription_id=_id_of(subscription.get("id"))
    )
    if order is None:
        return Outcome(Result.UNKNOWN_ORDER, None, f"subscription {_id_of(subscription.get('id'))}")
    _fill_stripe_ids(order, stripe_subscription_id=_id_of(subscription.get("id")))
    if cancel_order_locked(order=order, reason="Subscription ended at Stripe"):
        return Outcome(Result.PROCESSED, order, f"cancelled, now {order.status}")
    return Outcome(Result.IGNORED, order, f"already {order.status}")


HANDLERS: dict[str, Callable[[dict[str, Any]], Outcome]] = {
    "checkout.session.completed": on_checkout_session_completed,
    "checkout.session.async_payment_succeeded": on_async_payment_succeeded,
    "checkout.session.async_payment_failed": on_async_payment_failed,
    "checkout.session.expired": on_checkout_session_expired,
    "invoice.paid": on_invoice_paid,
    "invoice.payment_failed": on_invoice_payment_failed,
    "customer.subscription.deleted": on_subscription_deleted,
}
