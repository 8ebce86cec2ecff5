"""Staff view of the hosts: heartbeats, room, pool, the fleet page, draining and evacuation."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from orders.admin.base import ReadOnlyAdmin
from orders.fleet import evacuation, placement, rooms
from orders.fleet.hosts import mark_silent_hosts, with_free_capacity
from orders.fleet.overview import fleet
from orders.models import (
    Host,
    Instance,
)
from store.models import Plan

log = logging.getLogger(__name__)


class FreeCapacityFilter(admin.SimpleListFilter):
    """Hosts that take a new VM now (the dashboard's "hosts with free capacity")."""

    title = "room"
    parameter_name = "room"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("free", "Free capacity")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Host]) -> QuerySet[Host]:
        if self.value() == "free":
            return queryset.filter(with_free_capacity(timezone.now()))
        return queryset


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
    list_filter = (FreeCapacityFilter, "draining")
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
