"""Stripe's events as received (refunds are fields of Order)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from orders.models.orders import Order


class WebhookEvent(models.Model):
    """A Stripe event we received. The unique event id turns redeliveries into no-ops."""

    class Result(models.TextChoices):
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored (nothing to change)"
        UNKNOWN_ORDER = "unknown_order", "No matching order"
        UNHANDLED_TYPE = "unhandled_type", "Event type not handled"

    stripe_event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    livemode = models.BooleanField(default=False)
    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="webhook_events"
    )
    result = models.CharField(max_length=20, choices=Result.choices)
    detail = models.CharField(max_length=255, blank=True)
    received_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_event_id}"
