"""Staff views of orders, instances, webhook receipts, outbox rows, hosts and dead letters.

State is changed only through the actions (which call the services), never by editing fields:
every model here is read-only in its change form. The VM admin password is never displayed, and
never filterable: the changelists accept query-string lookups only on their list_filter and
date_hierarchy fields, never on a secret or a message body (a `?admin_password__regex=^a` lookup
answered "found" / "not found" and so leaked the password a character at a time).
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from orders.billing.cancellation import cancel_order
from orders.billing.checkout import CheckoutError, settle_refund
from orders.core.provisioning import ProvisioningError, retry_provisioning
from orders.fleet import evacuation, placement, rooms
from orders.fleet.hosts import instances_on_silent_hosts, mark_silent_hosts
from orders.fleet.overview import fleet
from orders.messaging.outbox import requeue
from orders.models import (
    Activity,
    Alarm,
    ConsoleCommand,
    DeadLetter,
    Host,
    Instance,
    MetricSample,
    Order,
    OutboxMessage,
    WebhookEvent,
)
from store.models import Plan

log = logging.getLogger(__name__)

MASK = "********"
# Never a lookup through these, on any model or relation (a regex lookup is an oracle).
SECRET_FIELDS = frozenset({"admin_password", "admin_password_encrypted", "password", "body"})


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are created by the shop's workflows; staff look and use actions."""

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        """Only the lookups the list's own filters make (Django allows any local field)."""
        parts = lookup.split(LOOKUP_SEP)
        if SECRET_FIELDS.intersection(parts) or parts[0] not in self._filter_fields(request):
            return False
        return super().lookup_allowed(lookup, value, request)

    def _filter_fields(self, request: HttpRequest | None) -> set[str]:
        fields = {self.date_hierarchy.split(LOOKUP_SEP)[0]} if self.date_hierarchy else set()
        list_filter = self.get_list_filter(request) if request is not None else self.list_filter
        for item in list_filter:
            if isinstance(item, type) and issubclass(item, admin.SimpleListFilter):
                fields.add(getattr(item, "parameter_name", ""))
            elif isinstance(item, (list, tuple)) and isinstance(item[0], str):
                fields.add(item[0].split(LOOKUP_SEP)[0])
            elif isinstance(item, str):
                fields.add(item.split(LOOKUP_SEP)[0])
        return fields

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
    exclude = ("admin_password_encrypted",)
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = (
        "public_id",
        "user",
        "plan",
        "status",
        "created_at",
        "paid_at",
        "cancelled_at",
        "refund",
    )
    list_filter = ("status", "refund_status", "plan", "created_at")
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
    actions = ["cancel_orders", "retry_refunds"]

    @admin.display(description="refund", ordering="refund_status")
    def refund(self, obj: Order) -> str:
        if obj.refund_status == Order.RefundStatus.REFUNDED and obj.refunded_at is not None:
            return format_html("refunded {}", obj.refunded_at.strftime("%Y-%m-%d %H:%M"))
        if obj.refund_status == Order.RefundStatus.PENDING:
            return format_html(
                '<strong style="color:#b00">pending</strong> {}', obj.refund_error or ""
            )
        return "-"

    @admin.action(description="Retry pending refunds (cancel the subscription, refund at Stripe)")
    def retry_refunds(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        pending = queryset.filter(refund_status=Order.RefundStatus.PENDING)
        for order in pending:
            if settle_refund(order=order):
                self.message_user(request, f"Order {order.public_id}: refunded.")
            else:
                order.refresh_from_db(fields=["refund_error"])
                self.message_user(
                    request,
                    f"Order {order.public_id}: refund still pending ({order.refund_error}).",
                    level=messages.ERROR,
                )
        if not pending:
            self.message_user(request, "No pending refund among the selected orders.")

    @admin.action(description="Cancel the selected orders (and delete their VMs)")
    def cancel_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        done = 0
        for order in queryset:
            if not order.can_cancel:
                continue
            try:
                cancel_order(order=order, reason=f"Cancelled by staff ({request.user})")
            except CheckoutError as exc:  # Stripe refused or is down: this order is unchanged
                self.message_user(
                    request, f"Order {order.public_id} not cancelled: {exc}", level=messages.ERROR
                )
                continue
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


class WaitingForRoomFilter(admin.SimpleListFilter):
    """Paid orders whose VM no live host had room for (orders/fleet/placement.py): staff act now."""

    title = "placement"
    parameter_name = "waiting_for_room"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Waiting for room")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Instance]) -> QuerySet[Instance]:
        if self.value() == "yes":
            return queryset.filter(placement.waiting_for_room())
        return queryset


@admin.register(Instance)
class InstanceAdmin(ReadOnlyAdmin):
    list_display = (
        "public_id",
        "order_link",
        "status",
        "attention",
        "stage",
        "host_id",
        "attempts",
        "restart_count",
        "latest_sample",
        "updated_at",
        "failure_reason",
    )
    list_filter = ("status", "stage", SilentHostFilter, WaitingForRoomFilter, "host_id")
    search_fields = (
        "public_id",
        "order__public_id",
        "host_id",
        "order__user__email",
        "admin_username",
    )
    list_select_related = ("order",)
    exclude = ("admin_password_encrypted",)
    actions = ["retry"]

    @admin.display(description="attention")
    def attention(self, obj: Instance) -> str:
        """A server that ran and is lost (its host gave up restarting it) needs staff now."""
        if obj.status == Instance.Status.LOST:
            return format_html(
                '<strong style="color:#b00">server down: {}</strong>', obj.failure_reason[:200]
            )
        if obj.is_restarting:
            return format_html(
                '<span style="color:#a60">restarting: {}</span>', obj.failure_reason[:200]
            )
        if obj.status == Instance.Status.REQUESTED and obj.unplaced_since is not None:
            return format_html(
                '<strong style="color:#b00">waiting for room since {}</strong>',
                f"{obj.unplaced_since:%d %b %H:%M}",
            )
        return ""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Instance]:
        # The latest metrics sample's time per row, by the (instance, at) index: one subquery.
        newest = MetricSample.objects.filter(instance=OuterRef("pk")).order_by("-at")
        instances: QuerySet[Instance] = super().get_queryset(request)
        return instances.annotate(
            latest_sample_at=Subquery(newest.values("at")[:1]),
            latest_sample_reachable=Subquery(newest.values("reachable")[:1]),
        )

    @admin.display(description="latest sample")
    def latest_sample(self, obj: Instance) -> str:
        at = getattr(obj, "latest_sample_at", None)
        if at is None:
            return "-"
        if not getattr(obj, "latest_sample_reachable", True):
            return format_html(
                '<strong style="color:#b00">not answering</strong> {}', f"{at:%d %b %H:%M:%S}"
            )
        return f"{at:%d %b %H:%M:%S}"

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
    """The outbox body with every "password" value replaced, at any depth, for display."""
    if isinstance(body, dict):
        return {
            key: MASK if key == "password" else masked_body(value) for key, value in body.items()
        }
    if isinstance(body, list):
        return [masked_body(item) for item in body]
    return copy.copy(body)


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
        "memory",
        "vcpus",
        "disk",
        "draining",
        "pool",
        "version",
        "fleet_link",
    )
    search_fields = ("host_id",)
    actions = ["drain", "undrain", "evacuate"]

    @admin.action(description="Evacuate: re-create their VMs on other hosts (data on them is lost)")
    def evacuate(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        for host in queryset:
            if not host.silent_since and not host.draining:
                self.message_user(
                    request,
                    f"{host.host_id} answers and is not draining: drain it first.",
                    level=messages.ERROR,
                )
                continue
            moved = evacuation.evacuate_host(host_id=host.host_id, by=str(request.user))
            self.message_user(request, f"{host.host_id}: {moved} VM(s) being re-created elsewhere.")

    @admin.display(description="memory MiB used / total")
    def memory(self, obj: Host) -> str:
        return f"{obj.memory_used_mb} / {obj.memory_total_mb}"

    @admin.display(description="vCPUs used / total")
    def vcpus(self, obj: Host) -> str:
        return f"{obj.vcpus_used} / {obj.vcpus_total}"

    @admin.display(description="disk GB used / total")
    def disk(self, obj: Host) -> str:
        return f"{obj.disk_used_gb} / {obj.disk_total_gb}"

    @admin.action(description="Drain: place no new VMs on the selected hosts")
    def drain(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        hosts = list(queryset.values_list("host_id", flat=True))
        queryset.update(draining=True)
        log.warning("event=hosts_draining host_ids=%s by=%s", ",".join(hosts), request.user)
        self.message_user(request, f"Draining {len(hosts)} host(s): no new VMs go there.")

    @admin.action(description="Undrain: place new VMs on the selected hosts again")
    def undrain(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        hosts = list(queryset.values_list("host_id", flat=True))
        queryset.update(draining=False)
        log.warning("event=hosts_undrained host_ids=%s by=%s", ",".join(hosts), request.user)
        self.message_user(request, f"{len(hosts)} host(s) take new VMs again.")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Host]:
        mark_silent_hosts(timezone.now())
        return super().get_queryset(request)

    def get_urls(self) -> list[URLPattern]:
        fleet_view = self.admin_site.admin_view(self.fleet_view)
        return [path("fleet/", fleet_view, name="orders_host_fleet"), *super().get_urls()]

    def fleet_view(self, request: HttpRequest) -> HttpResponse:
        """Per host its VMs, CPU, memory, free capacity, last heartbeat; per VM its latest
        sample (orders/fleet/overview.py)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        context = {
            **self.admin_site.each_context(request),
            "hosts": fleet(now),
            "plans": rooms.plan_capacity(Plan.objects.filter(is_active=True), now),
            "waiting": Instance.objects.filter(placement.waiting_for_room()).count(),
        }
        return TemplateResponse(request, "admin/orders/fleet.html", context)

    @admin.display(description="fleet")
    def fleet_link(self, obj: Host) -> str:
        return format_html(
            '<a href="{}#host-{}">VMs and their samples</a>',
            reverse("admin:orders_host_fleet"),
            obj.host_id,
        )

    @admin.display(description="status")
    def heartbeat(self, obj: Host) -> str:
        if obj.silent_since:
            return format_html(
                '<strong style="color:#b00">silent since {}</strong>', obj.silent_since
            )
        return "alive"


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    """Messages nobody could serve (computing.dead), newest first; the bodies are masked."""

    list_display = ("received_at", "rejected_by", "routing_key", "result", "instance", "reason")
    list_filter = ("result", "rejected_by", "routing_key")
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


@admin.register(ConsoleCommand)
class ConsoleCommandAdmin(ReadOnlyAdmin):
    """The owners' console actions (orders/console/commands.py). Filter billing=revert_failed: a plan
    change whose resize failed and whose price Stripe would not put back (fix it at Stripe)."""

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


@admin.register(Activity)
class ActivityAdmin(ReadOnlyAdmin):
    """Every order's timeline as its owner reads it."""

    list_display = ("at", "order", "kind", "message")
    list_filter = ("kind",)
    search_fields = ("order__public_id",)
    list_select_related = ("order",)
    fields = ("at", "order", "kind", "message")
    readonly_fields = fields


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
