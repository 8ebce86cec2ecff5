"""Stripe webhooks: verify, record once, apply to the order. No network I/O, one transaction.

`process_webhook()` is the whole workflow behind the thin view at orders:stripe_webhook. Over
400 lines as one thing: the verification, the shape checks and one small handler per Stripe event
type, which all run inside the one transaction that records the event.

- The signature is checked by the stripe library with settings.STRIPE_WEBHOOK_TOLERANCE; a bad or
  stale signature, or a body that is not a JSON event, raises WebhookError (the view answers 400)
  before anything is written. So does a signed body of the wrong shape (`_check_event`): nesting
  deeper than vmbackend.messages.MAX_DEPTH (checked before decoding: the decoder recurses per
  level), an id or type longer than its column, a NUL or an unpaired surrogate in any string
  (PostgreSQL refuses both), or an object the handlers read (`parent`, `metadata`, ...) that is
  not an object. The depth scan and the string check are the ones vmbackend/messages.py applies
  to every AMQP message.
- The event id is inserted under a unique constraint in the same transaction as its effects, so a
  redelivery (sequential or concurrent) is acknowledged and changes nothing.
- Every handled event finds its order by the order id we gave Stripe (client_reference_id /
  metadata, also on the subscription), else by the Stripe session / subscription id.
- Payment is proven by checkout.session.completed (payment_status paid),
  checkout.session.async_payment_succeeded, or the subscription's first invoice.paid, whichever
  comes first; the others then find the order paid and only fill in missing Stripe ids.
  docs/orders.md lists what each out-of-order arrival does.
- A payment for an order that had already ended (cancelled before it was paid, or a renewal of a
  subscription whose order was deleted) is not kept: the refund is recorded in the transaction
  (`checkout.request_refund`) and carried out after the commit (`checkout.settle_refund`: the one
  Stripe call on this path). If Stripe fails, the refund stays pending for staff to retry; the
  event is still acknowledged (docs/orders.md, "Refunds", says why not Stripe's redelivery).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from orders.billing.checkout import request_refund, settle_refund
from orders.core import activity
from orders.core.provisioning import cancel_order_locked, order_status_for, request_provisioning
from orders.models import Instance, Order, WebhookEvent
from vmbackend import messages  # its body bounds (depth, NUL/surrogates), written once for all

log = logging.getLogger(__name__)

Result = WebhookEvent.Result


class WebhookError(Exception):
    """The request is not a valid, fresh, signed Stripe event. Nothing was changed."""


@dataclass(frozen=True)
class WebhookResult:
    event_id: str
    type: str
    result: str
    duplicate: bool = False
    order_id: uuid.UUID | None = None


@dataclass(frozen=True)
class _Outcome:
    result: str
    order: Order | None = None
    detail: str = ""
    refund_due: bool = False  # settle the refund this event recorded, after the commit


def _verify(payload: bytes, signature: str) -> dict[str, Any]:
    try:
        return _construct(payload, signature)
    except WebhookError as exc:
        log.warning("event=stripe_webhook_rejected reason=%r size=%s", str(exc), len(payload))
        raise


ID_MAX_LENGTH = 255  # WebhookEvent.stripe_event_id and the Stripe id columns of Order
TYPE_MAX_LENGTH = 100  # WebhookEvent.type


def _construct(payload: bytes, signature: str) -> dict[str, Any]:
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(
            text, signature, settings.STRIPE_WEBHOOK_SECRET, settings.STRIPE_WEBHOOK_TOLERANCE
        )
    except stripe.SignatureVerificationError as exc:
        raise WebhookError(f"bad signature: {exc.user_message or exc}") from exc
    except UnicodeDecodeError as exc:
        raise WebhookError("payload is not JSON") from exc
    if messages.too_deep(text):  # Stripe's events nest about six levels deep
        raise WebhookError("payload nested too deeply")
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        raise WebhookError("payload is not JSON") from exc
    return _check_event(data)


# An id, or an expanded object with an id.
_REFERENCES = ("id", "customer", "subscription", "payment_intent", "invoice", "charge")
_TEXTS = ("client_reference_id", "payment_status")
_OBJECTS = ("metadata", "parent", "subscription_details", "lines")


def _check_event(data: Any) -> dict[str, Any]:
    """`data` if it has the shape the handlers rely on, else WebhookError."""
    if not isinstance(data, dict):
        raise WebhookError("payload is not a JSON object")
    if not _text(data.get("id"), ID_MAX_LENGTH, empty=False) or not _text(
        data.get("type"), TYPE_MAX_LENGTH, empty=False
    ):
        raise WebhookError("event id or type missing or too long")
    obj = data["data"].get("object") if isinstance(data.get("data"), dict) else None
    if not isinstance(obj, dict):
        raise WebhookError("event has no data.object")
    if messages.has_bad_string(data):
        raise WebhookError("event holds a NUL or an unpaired surrogate")
    _check_object(obj, "data.object")
    for where, nested in (
        ("parent", obj.get("parent")),
        ("parent.subscription_details", (obj.get("parent") or {}).get("subscription_details")),
        ("subscription_details", obj.get("subscription_details")),
    ):
        if nested is not None:
            _check_object(nested, where)
    lines = (obj.get("lines") or {}).get("data")
    if lines is not None and not (
        isinstance(lines, list) and all(isinstance(line, dict) for line in lines)
    ):
        raise WebhookError("lines.data is not a list of objects")
    for line in lines or ():
        _check_object(line, "lines.data[]")
    return data


def _check_object(obj: dict[str, Any], where: str) -> None:
    for key in _OBJECTS:
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise WebhookError(f"{where}.{key} is not an object")
    for key in _REFERENCES:
        value = obj.get(key)
        if isinstance(value, dict):
            value = value.get("id")
        if value is not None and not _text(value, ID_MAX_LENGTH):
            raise WebhookError(f"{where}.{key} is not an id")
    for key in _TEXTS:
        value = obj.get(key)
        if value is not None and not _text(value, ID_MAX_LENGTH):
            raise WebhookError(f"{where}.{key} is not a short string")


def _text(value: Any, max_length: int, *, empty: bool = True) -> bool:
    return isinstance(value, str) and (empty or bool(value)) and len(value) <= max_length


def process_webhook(*, payload: bytes, signature: str) -> WebhookResult:
    event = _verify(payload, signature)
    event_id, event_type = event["id"], event["type"]
    obj: dict[str, Any] = event["data"]["object"]
    if WebhookEvent.objects.filter(stripe_event_id=event_id).exists():
        # Fast path for a redelivery that finished long ago: no write at all. The unique insert
        # below still decides when two deliveries race.
        log.info("event=stripe_webhook_duplicate stripe_event_id=%s type=%s", event_id, event_type)
        return WebhookResult(event_id=event_id, type=event_type, result="duplicate", duplicate=True)
    with transaction.atomic():
        try:
            # Race: Stripe may deliver the same event twice at once. The second insert waits
            # for the first transaction and then fails on the unique index: a no-op.
            with transaction.atomic():
                receipt = WebhookEvent.objects.create(
                    stripe_event_id=event_id,
                    type=event_type,
                    livemode=bool(event.get("livemode")),
                    result=Result.PROCESSED,
                )
        except IntegrityError:
            log.info(
                "event=stripe_webhook_duplicate stripe_event_id=%s type=%s", event_id, event_type
            )
            return WebhookResult(
                event_id=event_id, type=event_type, result="duplicate", duplicate=True
            )
        handler = HANDLERS.get(event_type)
        outcome = handler(obj) if handler else _Outcome(Result.UNHANDLED_TYPE)
        receipt.result, receipt.order, receipt.detail = (
            outcome.result,
            outcome.order,
            outcome.detail[:255],
        )
        receipt.save(update_fields=["result", "order", "detail"])
    if outcome.refund_due and outcome.order is not None:
        # After the commit: the pending refund is on record whatever Stripe does now.
        settle_refund(order=outcome.order)
    order_id = outcome.order.public_id if outcome.order else None
    log_fn = log.warning if outcome.result == Result.UNKNOWN_ORDER else log.info
    log_fn(
        "event=stripe_webhook stripe_event_id=%s type=%s result=%s order_id=%s detail=%r",
        event_id,
        event_type,
        outcome.result,
        order_id or "-",
        outcome.detail,
    )
    return WebhookResult(
        event_id=event_id, type=event_type, result=outcome.result, order_id=order_id
    )


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
) -> _Outcome:
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
        return _Outcome(Result.PROCESSED, order, "paid, VM requested")
    _fill_stripe_ids(order, **stripe_ids)
    if order.status in Order.ENDED and (order.paid_at is None or renewal):
        log.warning(
            "event=payment_for_ended_order order_id=%s status=%s", order.public_id, order.status
        )
        if request_refund(order=order, payment=payment):
            detail = f"payment for a {order.status} order: refund"
            return _Outcome(Result.PROCESSED, order, detail, refund_due=True)
        detail = f"{order.status}, refund already {order.refund_status}"
        return _Outcome(Result.IGNORED, order, detail)
    return _Outcome(Result.IGNORED, order, f"already {order.status}")


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


def on_checkout_session_completed(session: dict[str, Any]) -> _Outcome:
    order = _session_order(session)
    if order is None:
        return _Outcome(Result.UNKNOWN_ORDER, None, f"session {_id_of(session.get('id'))}")
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        # Delayed payment method: async_payment_succeeded / _failed will follow.
        _fill_stripe_ids(order, **_session_ids(session))
        return _Outcome(Result.IGNORED, order, f"payment_status={session.get('payment_status')}")
    return _fulfil(order, payment=_session_payment(session), stripe_ids=_session_ids(session))


def on_async_payment_succeeded(session: dict[str, Any]) -> _Outcome:
    order = _session_order(session)
    if order is None:
        return _Outcome(Result.UNKNOWN_ORDER, None, f"session {_id_of(session.get('id'))}")
    return _fulfil(order, payment=_session_payment(session), stripe_ids=_session_ids(session))


def _cancel_unpaid(session: dict[str, Any], *, reason: str, detail: str) -> _Outcome:
    """The checkout ended without money: cancel the order if it is still waiting for payment."""
    order = _session_order(session)
    if order is None:
        return _Outcome(Result.UNKNOWN_ORDER, None, f"session {_id_of(session.get('id'))}")
    if order.status != Order.Status.PENDING_PAYMENT:
        return _Outcome(Result.IGNORED, order, f"already {order.status}")
    cancel_order_locked(order=order, reason=reason)
    return _Outcome(Result.PROCESSED, order, detail)


def on_async_payment_failed(session: dict[str, Any]) -> _Outcome:
    outcome = _cancel_unpaid(
        session, reason="Payment failed", detail="payment failed, order cancelled"
    )
    if outcome.result == Result.PROCESSED and outcome.order is not None:
        activity.payment_failed(order=outcome.order, renewal=False)
    return outcome


def on_checkout_session_expired(session: dict[str, Any]) -> _Outcome:
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


def on_invoice_paid(invoice: dict[str, Any]) -> _Outcome:
    order = _invoice_order(invoice)
    if order is None:
        return _Outcome(Result.UNKNOWN_ORDER, None, f"invoice {_id_of(invoice.get('id'))}")
    subscription_id, _ = _invoice_subscription(invoice)
    ids = {
        "stripe_subscription_id": subscription_id,
        "stripe_customer_id": _id_of(invoice.get("customer")),
    }
    if order.status == Order.Status.PAST_DUE:
        instance = Instance.objects.filter(order=order).first()
        order.move_to(order_status_for(instance) if instance else Order.Status.PAID)
        return _Outcome(Result.PROCESSED, order, f"renewal paid, back to {order.status}")
    # The subscription's first invoice is proof of payment too (it may beat the session event).
    payment = (
        _id_of(invoice.get("payment_intent"))
        or _id_of(invoice.get("charge"))
        or _id_of(invoice.get("id"))
    )
    renewal = invoice.get("billing_reason") == "subscription_cycle"
    return _fulfil(order, payment=payment, stripe_ids=ids, renewal=renewal)


def on_invoice_payment_failed(invoice: dict[str, Any]) -> _Outcome:
    order = _invoice_order(invoice)
    if order is None:
        return _Outcome(Result.UNKNOWN_ORDER, None, f"invoice {_id_of(invoice.get('id'))}")
    if order.status in Order.IN_GOOD_STANDING:
        order.move_to(Order.Status.PAST_DUE)
        activity.payment_failed(order=order, renewal=True)
        return _Outcome(Result.PROCESSED, order, "renewal failed, past due")
    # A first invoice that fails leaves the order awaiting payment; others change nothing.
    return _Outcome(Result.IGNORED, order, f"already {order.status}")


def on_subscription_deleted(subscription: dict[str, Any]) -> _Outcome:
    order = _locked_order(
        order_ref=_metadata_order_ref(subscription), subscription_id=_id_of(subscription.get("id"))
    )
    if order is None:
        return _Outcome(
            Result.UNKNOWN_ORDER, None, f"subscription {_id_of(subscription.get('id'))}"
        )
    _fill_stripe_ids(order, stripe_subscription_id=_id_of(subscription.get("id")))
    if cancel_order_locked(order=order, reason="Subscription ended at Stripe"):
        return _Outcome(Result.PROCESSED, order, f"cancelled, now {order.status}")
    return _Outcome(Result.IGNORED, order, f"already {order.status}")


HANDLERS: dict[str, Callable[[dict[str, Any]], _Outcome]] = {
    "checkout.session.completed": on_checkout_session_completed,
    "checkout.session.async_payment_succeeded": on_async_payment_succeeded,
    "checkout.session.async_payment_failed": on_async_payment_failed,
    "checkout.session.expired": on_checkout_session_expired,
    "invoice.paid": on_invoice_paid,
    "invoice.payment_failed": on_invoice_payment_failed,
    "customer.subscription.deleted": on_subscription_deleted,
}
