"""The staff's fleet view: per host its VMs, their CPU and memory, its free capacity and last
heartbeat; per instance its latest metrics sample (orders/admin/fleet.py shows it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import OuterRef, QuerySet, Subquery

from orders.fleet.hosts import mark_silent_hosts
from orders.models import Host, Instance, MetricSample

# Instances that have (or may have) a VM on their host.
ON_A_HOST = Instance.LIVE | {Instance.Status.LOST, Instance.Status.DELETING}


@dataclass
class FleetVM:
    instance: Instance
    sample: MetricSample | None


@dataclass
class FleetHost:
    host_id: str
    host: Host | None  # None: instances name a host that never sent a heartbeat
    vms: list[FleetVM] = field(default_factory=list)

    @property
    def cpu_percent(self) -> float:
        """QEMU CPU of its VMs, from their latest samples (100 = one core)."""
        return sum(vm.sample.cpu_percent for vm in self.vms if vm.sample)

    @property
    def rss_bytes(self) -> int:
        return sum(vm.sample.rss_bytes for vm in self.vms if vm.sample)


def with_latest_sample(instances: QuerySet[Instance]) -> list[FleetVM]:
    """Each instance with its newest sample, in two queries (the newest per instance by the
    (instance, at) unique index, then those rows by primary key)."""
    newest = MetricSample.objects.filter(instance=OuterRef("pk")).order_by("-at").values("pk")[:1]
    rows = list(instances.annotate(latest_sample_id=Subquery(newest)))
    samples = MetricSample.objects.in_bulk(
        [r.latest_sample_id for r in rows if r.latest_sample_id is not None]
    )
    return [FleetVM(r, samples.get(r.latest_sample_id)) for r in rows]


def fleet(now: datetime) -> list[FleetHost]:
    """Every known host (by heartbeat or named by an instance), with its VMs."""
    mark_silent_hosts(now)
    hosts = {h.host_id: FleetHost(h.host_id, h) for h in Host.objects.all()}
    instances = (
        Instance.objects.filter(status__in=ON_A_HOST)
        .exclude(host_id="")
        .select_related("order", "order__plan")
        .order_by("host_id", "created_at")
    )
    for vm in with_latest_sample(instances):
        host_id = vm.instance.host_id
        hosts.setdefault(host_id, FleetHost(host_id, None)).vms.append(vm)
    return [hosts[key] for key in sorted(hosts)]
