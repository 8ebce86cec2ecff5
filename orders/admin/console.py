"""Staff view of the customers' console commands (the new password never shown)."""

from __future__ import annotations

from django.contrib import admin

from orders.admin.base import ReadOnlyAdmin
from orders.models import (
    ConsoleCommand,
)


@admin.register(ConsoleCommand)
class ConsoleCommandAdmin(ReadOnlyAdmin):
    """The owners' console actions (orders/console/commands.py). Filter billing=revert_failed: a
    plan change whose resize failed and whose price Stripe would not put back (fix it at Stripe)."""

    list_display = ("created_at", "kind", "status", "billing", "instance", "reason")
    list_filter = ("status", "kind", "billing")
    search_fields = ("request_id", "instance__public_id", "instance__order__public_id")
    list_select_related = ("instance",)
    # Never the pending password (new_password_encrypted).
    fields = (
        "request_id",
        "instance",
        "kind",
        "status",
        "from_plan",
        "to_plan",
        "billing",
        "reason",
        "created_at",
        "finished_at",
        "password_shown_at",
    )
    readonly_fields = fields
