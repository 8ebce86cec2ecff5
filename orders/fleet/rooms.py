"""What is left on each host (its room) and so which plans are for sale (docs/fleet.md).

Nova's filters and weigher, small: a host is a candidate when it is alive, not draining, reports
its resources and the VM fits what is left on it; candidates are ordered by free memory (`pack`
or `spread`, WARREN_PLACEMENT). A plan is sold out when no live host has room for it. The relay's
placement (orders/fleet/placement.py) and the pricing page (orders/web/catalogue.py) both ask here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from orders.models import Host, Instance
from vmbackend.protocol.capacity import Resources, Size, refusal

log = logging.getLogger(__name__)

PACK, SPREAD, SHARED = "pack", "spread", "shared"
STRATEGIES = (PACK, SPREAD, SHARED)
# Instances that hold room on their host (a lost VM keeps its disk and may start again).
ON_A_HOST = frozenset(
    {
        Instance.Status.BOOTING,
        Instance.Status.READY,
        Instance.Status.LOST,
        Instance.Status.DELETING,
    }
)


def size_of(instance: Instance) -> Size:
    """The VM's size: its own (set at payment), else its plan's."""
    plan = instance.order.plan
    return Size(
        memory_mb=instance.memory_mb or plan.memory_mb,
        vcpus=instance.vcpus or plan.vcpus,
        disk_gb=instance.disk_gb or plan.disk_gb,
    )


def _sizes_by(field: str, **filters: object) -> dict[str, Size]:
    """Per `field` value (a host id): the summed sizes of the instances matching `filters`
    (an instance without its own size counts its plan's). One query."""
    totals = (
        Instance.objects.filter(**filters)
        .exclude(**{field: ""})
        .values(field)
        .annotate(
            memory=Sum(Coalesce(F("memory_mb"), F("order__plan__memory_mb"))),
            vcpus=Sum(Coalesce(F("vcpus"), F("order__plan__vcpus"))),
            disk=Sum(Coalesce(F("disk_gb"), F("order__plan__disk_gb"))),
        )
    )
    return {
        row[field]: Size(row["memory"] or 0, row["vcpus"] or 0, row["disk"] or 0) for row in totals
    }


@dataclass(frozen=True)
class HostRoom:
    """One host's resources as placement sees them."""

    host: Host
    resources: Resources  # totals, and used = reported-or-known plus claims

    @property
    def host_id(self) -> str:
        return self.host.host_id

    def fits(self, size: Size, margin: float = 0.0) -> bool:
        return refusal(self.resources, with_margin(size, margin)) is None


def with_margin(size: Size, margin: float) -> Size:
    """`size` grown by `margin` (0.1 = 10 %), rounded up: the pricing page's safety margin."""
    return Size(
        memory_mb=math.ceil(size.memory_mb * (1 + margin)),
        vcpus=math.ceil(size.vcpus * (1 + margin)),
        disk_gb=math.ceil(size.disk_gb * (1 + margin)),
    )


def live_hosts(now: datetime) -> list[Host]:
    """Hosts heard from within the timeout, not draining, that report their resources."""
    cutoff = now - timedelta(seconds=settings.HOST_HEARTBEAT_TIMEOUT)
    return list(
        Host.objects.filter(
            last_heartbeat_at__gte=cutoff, draining=False, memory_total_mb__gt=0
        ).order_by("host_id")
    )


def rooms(hosts: list[Host]) -> list[HostRoom]:
    """Each host with what is used on it: max(reported, known) + claims, per resource."""
    ids = [h.host_id for h in hosts]
    known = _sizes_by("host_id", host_id__in=ids, status__in=ON_A_HOST)
    claims = _sizes_by("placed_on", placed_on__in=ids, status=Instance.Status.REQUESTED)
    out = []
    for host in hosts:
        k = known.get(host.host_id, Size(0, 0, 0))
        c = claims.get(host.host_id, Size(0, 0, 0))
        out.append(
            HostRoom(
                host,
                Resources(
                    memory_total_mb=host.memory_total_mb,
                    vcpus_total=host.vcpus_total,
                    disk_total_gb=host.disk_total_gb,
                    memory_used_mb=max(host.memory_used_mb, k.memory_mb) + c.memory_mb,
                    vcpus_used=max(host.vcpus_used, k.vcpus) + c.vcpus,
                    disk_used_gb=max(host.disk_used_gb, k.disk_gb) + c.disk_gb,
                ),
            )
        )
    return out


def weigh(candidates: list[HostRoom], strategy: str) -> list[HostRoom]:
    """Order the candidates: `pack` fills the fullest host first (big plans keep finding an
    empty one), `spread` the emptiest (a lost host takes fewer customers with it). Ties: by
    host id, so the order is stable."""
    sign = 1 if strategy == PACK else -1
    return sorted(candidates, key=lambda r: (sign * r.resources.memory_free_mb, r.host_id))


def fleet_known(now: datetime) -> bool:
    """Whether any host ever reported its resources: without that (an old daemon, a shop with
    no host yet) the shop cannot tell what fits and sells as before (the shared queue)."""
    return Host.objects.filter(memory_total_mb__gt=0).exists()


def plan_available(plan: object, now: datetime | None = None) -> bool:
    """Whether a live host can fit a VM of `plan` with the safety margin (WARREN_SELL_MARGIN).
    True when the fleet is unknown (see fleet_known)."""
    now = now or timezone.now()
    if not fleet_known(now):
        return True
    size = Size(plan.memory_mb, plan.vcpus, plan.disk_gb)  # type: ignore[attr-defined]
    return any(r.fits(size, settings.SELL_MARGIN) for r in rooms(live_hosts(now)))


def available_plans(plans: Iterable[object], now: datetime | None = None) -> dict[int, bool]:
    """plan pk -> plan_available, with the hosts read once."""
    now = now or timezone.now()
    plans = list(plans)
    if not fleet_known(now):
        return {p.pk: True for p in plans}  # type: ignore[attr-defined]
    host_rooms = rooms(live_hosts(now))
    return {
        p.pk: any(  # type: ignore[attr-defined]
            r.fits(Size(p.memory_mb, p.vcpus, p.disk_gb), settings.SELL_MARGIN)  # type: ignore[attr-defined]
            for r in host_rooms
        )
        for p in plans
    }


@dataclass(frozen=True)
class PlanCapacity:
    plan: object
    more: int  # VMs of this plan the live hosts could still take (each host on its own)
    on_sale: bool


def plan_capacity(plans: Iterable[object], now: datetime | None = None) -> list[PlanCapacity]:
    """Per plan: how many more of its VMs the live hosts have room for, and whether it is on
    sale (the staff's fleet view)."""
    now = now or timezone.now()
    host_rooms = rooms(live_hosts(now))
    plans = list(plans)
    on_sale = available_plans(plans, now)
    out = []
    for plan in plans:
        size = Size(plan.memory_mb, plan.vcpus, plan.disk_gb)  # type: ignore[attr-defined]
        more = 0
        for room in host_rooms:
            r = room.resources
            more += max(
                0,
                min(
                    r.memory_free_mb // max(size.memory_mb, 1),
                    r.vcpus_free // max(size.vcpus, 1),
                    r.disk_free_gb // max(size.disk_gb, 1),
                ),
            )
        out.append(PlanCapacity(plan, more, on_sale[plan.pk]))  # type: ignore[attr-defined]
    return out
