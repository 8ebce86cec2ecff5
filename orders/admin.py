"""Staff views of orders, instances, webhook receipts, outbox rows and hosts.

State is changed only through the actions (which call the services), never by editing fields:
every model here is read-only in its change form. The VM admin password is never displayed.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from orders.host_events import instances_on_silent_hosts, mark_silent_hosts
from orders.models import Host, Instance, Order, OutboxMessage, WebhookEvent
from orders.outbox import requeue
from orders.provisioning import ProvisioningError, cancel_order, retry_provisioning

MASK = "********"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are created by the shop's workflows; staff look and use actions."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class InstanceInline(admin.StackedInline):
    model = Instance
    can_delete = False
    extra = 0
    exclude = ("admin_password",)
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "user", "plan", "status", "created_at", "paid_at", "cancelled_at")
    list_filter = ("status", "plan", "created_at")
    search_fields = (
        "public_id",
        "user__username",
        "user__email",
        "stripe_checkout_session_id",
        "stripe_subscription_id",
        "stripe_customer_id",
    )
    list_select_related = ("user", "plan")
    date_hierarchy = "created_at"
    inlines = [InstanceInline]
    actions = ["cancel_orders"]

    @admin.action(description="Cancel the selected orders (and delete their VMs)")
    def cancel_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        done = 0
        for order in queryset:
            if not order.can_cancel:
                continue
            cancel_order(order=order, reason=f"Cancelled by staff ({request.user})")
            done += 1
        skipped = queryset.count() - done
        self.message_user(request, f"Cancelled {done} order(s); {skipped} could not be cancelled.")


class SilentHostFilter(admin.SimpleListFilter):
    title = "host heartbeat"
    parameter_name = "host_silent"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "On a silent host")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Instance]) -> QuerySet[Instance]:
        if self.value() == "yes":
            mark_silent_hosts(timezone.now())
            return queryset.filter(pk__in=instances_on_silent_hosts().values("pk"))
        return queryset


@admin.register(Instance)
class InstanceAdmin(ReadOnlyAdmin):
    list_display = (
        "public_id",
        "order_link",
        "status",
        "stage",
        "host_id",
        "attempts",
        "updated_at",
    )
    list_filter = ("status", "stage", SilentHostFilter, "host_id")
    search_fields = (
        "public_id",
        "order__public_id",
        "host_id",
        "order__user__email",
        "admin_username",
    )
    list_select_related = ("order",)
    exclude = ("admin_password",)
    actions = ["retry"]

    @admin.display(description="order")
    def order_link(self, obj: Instance) -> str:
        return format_html(
            '<a href="../order/{}/change/">{}</a>', obj.order_id, obj.order.public_id
        )

    @admin.action(description="Retry provisioning (new VM id) of failed or lost instances")
    def retry(self, request: HttpRequest, queryset: QuerySet[Instance]) -> None:
        for instance in queryset:
            try:
                retried = retry_provisioning(instance=instance)
            except ProvisioningError as exc:
                self.message_user(request, str(exc), level=messages.ERROR)
                continue
            self.message_user(
                request,
                f"Requested a new VM {retried.public_id} for order {retried.order.public_id}.",
            )


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ("stripe_event_id", "type", "result", "order", "livemode", "received_at")
    list_filter = ("result", "type", "livemode")
    search_fields = ("stripe_event_id", "order__public_id", "detail")
    list_select_related = ("order",)
    date_hierarchy = "received_at"


def masked_body(body: Any) -> Any:
    """The outbox body with the VM admin password replaced, for display."""
    shown = copy.deepcopy(body)
    admin_creds = (
        ((shown or {}).get("options") or {}).get("admin") if isinstance(shown, dict) else None
    )
    if isinstance(admin_creds, dict) and "password" in admin_creds:
        admin_creds["password"] = MASK
    return shown


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
        return ((obj.body or {}).get("options") or {}).get("vm-id", "-")

    @admin.display(description="body")
    def body_display(self, obj: OutboxMessage) -> str:
        return format_html("<pre>{}</pre>", json.dumps(masked_body(obj.body), indent=2))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Re-send the selected messages")
    def resend(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        count = sum(requeue(message=message) for message in queryset)
        self.message_user(request, f"Queued {count} message(s) again for the relay.")


@admin.register(Host)
class HostAdmin(ReadOnlyAdmin):
    list_display = (
        "host_id",
        "heartbeat",
        "last_heartbeat_at",
        "capacity",
        "running",
        "free_slots",
        "version",
    )
    search_fields = ("host_id",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Host]:
        mark_silent_hosts(timezone.now())
        return super().get_queryset(request)

    @admin.display(description="status")
    def heartbeat(self, obj: Host) -> str:
        if obj.silent_since:
            return format_html(
                '<strong style="color:#b00">silent since {}</strong>', obj.silent_since
            )
        return "alive"
