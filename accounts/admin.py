from __future__ import annotations

from django.contrib import admin
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest

from accounts.models import QueuedEmail


@admin.register(QueuedEmail)
class QueuedEmailAdmin(admin.ModelAdmin):
    """Staff see what waits or was given up, and why; never the bodies (a password reset link
    in one signs in as its owner)."""

    list_display = (
        "subject",
        "recipients",
        "created_at",
        "attempts",
        "next_attempt_at",
        "given_up_at",
    )
    list_filter = (("given_up_at", admin.EmptyFieldListFilter),)
    fields = (
        "subject",
        "to",
        "created_at",
        "attempts",
        "next_attempt_at",
        "last_error",
        "given_up_at",
    )
    readonly_fields = fields
    ordering = ("next_attempt_at",)

    @admin.display(description="to")
    def recipients(self, obj: QueuedEmail) -> str:
        return ", ".join(obj.to)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # Only the list's own filter: Django takes a query-string lookup on any local field, and
        # `?body__regex=^...` would read a queued reset link a character at a time.
        first = lookup.split(LOOKUP_SEP)[0]
        return first == "given_up_at" and super().lookup_allowed(lookup, value, request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: QueuedEmail | None = None) -> bool:
        return False
