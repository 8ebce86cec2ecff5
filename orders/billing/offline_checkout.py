"""The stand-in for Stripe's hosted checkout when the shop runs without Stripe keys.

It completes a payment the way Stripe does: it builds a `checkout.session.completed` event, signs
it with the webhook secret (header `t=<ts>,v1=<hmac-sha256 of "<ts>.<body>">`) and hands body and
signature to `process_webhook()`, the function behind the webhook view, so the production path
(signature check, event receipt, fulfilment) runs. In-process on purpose: an HTTP request to "our
own" URL would be built from the request's Host header, which the customer controls (the shop
could be made to post elsewhere or probe ports). It cannot run while a Stripe secret key is set.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any

import stripe
from django.conf import settings

from orders.billing.webhooks import WebhookError, WebhookResult, process_webhook
from orders.models import Order

log = logging.getLogger(__name__)


class OfflinePaymentsDisabled(Exception):
    """A Stripe secret key is configured: only Stripe may complete payments."""


class OfflinePaymentError(Exception):
    """The webhook workflow refused the offline payment event."""


def offline_payments_enabled() -> bool:
    return not settings.STRIPE_SECRET_KEY


def sign_payload(payload: bytes, *, secret: str, timestamp: int) -> str:
    """A `Stripe-Signature` header value for payload, as Stripe computes it."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _stripe_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def checkout_completed_event(*, order: Order, created: int) -> dict[str, Any]:
    """A realistic checkout.session.completed event (test mode) for a subscription order."""
    order_ref = str(order.public_id)
    plan = order.plan
    return {
        "id": _stripe_id("evt"),
        "object": "event",
        "api_version": stripe.api_version,
        "created": created,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": order.stripe_checkout_session_id or _stripe_id("cs"),
                "object": "checkout.session",
                "mode": "subscription",
                "status": "complete",
                "payment_status": "paid",
                "client_reference_id": order_ref,
                "metadata": {"order_id": order_ref},
                "customer": order.stripe_customer_id or _stripe_id("cus"),
                "subscription": order.stripe_subscription_id or _stripe_id("sub"),
                "amount_subtotal": plan.monthly_price_cents,
                "amount_total": plan.monthly_price_cents,
                "currency": plan.currency,
                "livemode": False,
                "created": created,
            }
        },
    }


def complete_offline_payment(*, order: Order) -> WebhookResult:
    """Pay `order` offline through the webhook workflow, signature check included."""
    if not offline_payments_enabled():
        raise OfflinePaymentsDisabled("Offline payments are impossible while Stripe keys are set")
    now = int(time.time())
    event = checkout_completed_event(order=order, created=now)
    payload = json.dumps(event).encode()
    signature = sign_payload(payload, secret=settings.STRIPE_WEBHOOK_SECRET, timestamp=now)
    log.info("event=offline_payment_sending order_id=%s event_id=%s", order.public_id, event["id"])
    try:
        result = process_webhook(payload=payload, signature=signature)
    except WebhookError as exc:
        log.error("event=offline_payment_failed order_id=%s error=%s", order.public_id, exc)
        raise OfflinePaymentError(str(exc)) from exc
    log.info("event=offline_payment_done order_id=%s result=%s", order.public_id, result.result)
    return result
