"""Silent hosts: a host whose heartbeat is older than HOST_HEARTBEAT_TIMEOUT (docs/fleet.md).

The event worker marks them (orders/messaging/consumer.py); staff see them and their instances in
the admin and the fleet view, and evacuation (orders/fleet/evacuation.py) moves their VMs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet

from orders.models import (
    Host,
    Instance,
)

log = logging.getLogger(__name__)


def mark_silent_hosts(now: datetime) -> list[Host]:
    """Mark hosts whose last heartbeat is older than HOST_HEARTBEAT_TIMEOUT; return all silent.

    Their instances are not changed (the host may only be cut off): staff see them in the admin
    (instances_on_silent_hosts) and decide.
    """
    cutoff = now - timedelta(seconds=settings.HOST_HEARTBEAT_TIMEOUT)
    newly = Host.objects.filter(last_heartbeat_at__lt=cutoff, silent_since__isnull=True)
    for host_id in newly.values_list("host_id", flat=True):
        log.warning("event=host_silent host_id=%s", host_id)
    newly.update(silent_since=now)
    return list(Host.objects.filter(last_heartbeat_at__lt=cutoff))


def instances_on_silent_hosts() -> QuerySet[Instance]:
    silent = Host.objects.filter(silent_since__isnull=False).values("host_id")
    return Instance.objects.filter(host_id__in=silent).exclude(status__in=Instance.WITHOUT_VM)


def with_free_capacity(now: datetime) -> Q:
    """Hosts that take a new VM now: heard from within the timeout, not draining, a free slot
    (the staff dashboard's count and the hosts list's filter)."""
    cutoff = now - timedelta(seconds=settings.HOST_HEARTBEAT_TIMEOUT)
    return Q(last_heartbeat_at__gte=cutoff, draining=False, free_slots__gt=0)
