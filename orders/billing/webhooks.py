"""Stripe webhooks: verify, record once, apply to the order. No network I/O, one transaction.

`process_webhook()` is the whole workflow behind the thin view at orders:stripe_webhook: the
verification and the shape checks here, then one small handler per Stripe event type
(orders/billing/stripe_events.py), all inside the one transaction that records the event.

- The signature is checked by the stripe library with settings.STRIPE_WEBHOOK_TOLERANCE; a bad or
  stale signature, or a body that is not a JSON event, raises WebhookError (the view answers 400)
  before anything is written. So does a signed body of the wrong shape (`_check_event`): nesting
  deeper than vmbackend.protocol.messages.MAX_DEPTH (checked before decoding: the decoder recurses per
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
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from orders.billing.checkout import settle_refund
from orders.billing.stripe_events import HANDLERS, Outcome
from orders.models import WebhookEvent
from vmbackend.protocol import (
    messages,
)  # its body bounds (depth, NUL/surrogates), written once for all

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
        outcome = handler(obj) if handler else Outcome(Result.UNHANDLED_TYPE)
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
