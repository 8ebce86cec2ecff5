"""Staff views of orders, their instances and timelines: cancel, retry, refund, place again."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from orders.admin.base import ReadOnlyAdmin
from orders.billing.cancellation import cancel_order
from orders.billing.checkout import CheckoutError, settle_refund
from orders.core.provisioning import ProvisioningError, retry_provisioning
from orders.fleet import placement
from orders.fleet.hosts import instances_on_silent_hosts, mark_silent_hosts
from orders.models import (
    Activity,
    Instance,
    MetricSample,
    Order,
)


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
    list_filter = (
        "status",
        "stage",
        SilentHostFilter,
        WaitingForRoomFilter,
        "host_id",
        "order__plan",
    )
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


@admin.register(Activity)
class ActivityAdmin(ReadOnlyAdmin):
    """Every order's timeline as its owner reads it."""

    list_display = ("at", "order", "kind", "message")
    list_filter = ("kind",)
    search_fields = ("order__public_id",)
    list_select_related = ("order",)
    fields = ("at", "order", "kind", "message")
    readonly_fields = fields
