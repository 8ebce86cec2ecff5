"""Staff view of Stripe's events as received (refunds are actions on the order)."""

from __future__ import annotations

from django.contrib import admin

from orders.admin.base import ReadOnlyAdmin
from orders.models import (
    WebhookEvent,
)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ("stripe_event_id", "type", "result", "order", "livemode", "received_at")
    list_filter = ("result", "type", "livemode")
    search_fields = ("stripe_event_id", "order__public_id", "detail")
    list_select_related = ("order",)
    date_hierarchy = "received_at"
