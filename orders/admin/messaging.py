"""Staff views of the outbox (requeue a row) and the dead letters (bodies masked)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from orders.admin.base import ReadOnlyAdmin, masked_body
from orders.messaging.outbox import requeue, superseded
from orders.models import (
    DeadLetter,
    OutboxMessage,
)


class SentFilter(admin.SimpleListFilter):
    title = "sent"
    parameter_name = "sent"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "Unsent"), ("yes", "Sent")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> QuerySet[OutboxMessage]:
        if self.value() in ("yes", "no"):
            return queryset.filter(sent_at__isnull=self.value() == "no")
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyAdmin):
    list_display = (
        "message_id",
        "routing_key",
        "vm_id",
        "created_at",
        "sent_at",
        "attempts",
        "last_error",
    )
    list_filter = (SentFilter, "routing_key", "exchange")
    search_fields = (
        "message_id",
        "routing_key",
        "instance__public_id",
        "instance__order__public_id",
    )
    fields = (
        "message_id",
        "exchange",
        "routing_key",
        "instance",
        "body_display",
        "created_at",
        "sent_at",
        "attempts",
        "last_attempt_at",
        "last_error",
    )
    readonly_fields = fields
    actions = ["resend"]

    @admin.display(description="vm-id")
    def vm_id(self, obj: OutboxMessage) -> str:
        return str(((obj.body or {}).get("options") or {}).get("vm-id", "-"))

    @admin.display(description="body")
    def body_display(self, obj: OutboxMessage) -> str:
        return format_html("<pre>{}</pre>", json.dumps(masked_body(obj.body), indent=2))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Re-send the selected messages")
    def resend(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        stale = [message for message in queryset if superseded(message)]
        count = sum(requeue(message=message) for message in queryset if message not in stale)
        self.message_user(request, f"Queued {count} message(s) again for the relay.")
        if stale:
            self.message_user(
                request,
                f"Refused {len(stale)} create-vm(s) for a vm-id the instance no longer has "
                "(a retry replaced it): re-sending would boot a VM nobody owns.",
                level=messages.WARNING,
            )


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    """Messages nobody could serve (computing.dead.q), newest first; the bodies are masked."""

    list_display = ("received_at", "rejected_by", "routing_key", "result", "instance", "reason")
    list_filter = ("received_at", "result", "rejected_by", "routing_key")
    search_fields = ("reason", "message_id", "instance__public_id", "instance__order__public_id")
    list_select_related = ("instance",)
    fields = (
        "received_at",
        "rejected_by",
        "routing_key",
        "message_id",
        "result",
        "instance",
        "reason",
        "body_display",
    )
    readonly_fields = fields

    @admin.display(description="body (passwords masked)")
    def body_display(self, obj: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", obj.body)
