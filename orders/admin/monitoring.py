"""Staff view of the alarms."""

from __future__ import annotations

from django.contrib import admin

from orders.admin.base import ReadOnlyAdmin
from orders.models import (
    Alarm,
)


@admin.register(Alarm)
class AlarmAdmin(ReadOnlyAdmin):
    """Every instance's alarms (defaults and the customers' thresholds), firing ones first."""

    list_display = (
        "instance",
        "kind",
        "status",
        "threshold",
        "duration_s",
        "fired_at",
        "cleared_at",
    )
    list_filter = ("status", "kind", "is_default")
    search_fields = ("instance__public_id", "instance__order__public_id")
    list_select_related = ("instance",)
    ordering = ("-status", "-fired_at")
