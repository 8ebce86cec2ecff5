"""Losing a host (docs/fleet.md): its customers are told, and its VMs are re-created elsewhere.

A host silent past HOST_HEARTBEAT_TIMEOUT is marked silent (orders/messaging/host_events.py); from
then on the order pages of its servers say the host is unreachable (`host_down_since`). Staff
evacuate it from the admin, or the event worker does once it has been silent HOST_EVACUATE_AFTER
seconds (0: never by itself). Evacuating re-creates each of its VMs on another host under a fresh
vm-id with the same admin user and password: a new address, and an empty server (the data was on the
lost host's disk; the customer is told so plainly). The old vm-id gets a delete-vm on the lost
host's own queue, so a host that comes back removes its stale copy instead of running two.

A create-vm placed on the host that it never took is simply placed again (same vm-id: nothing
ever ran). Every instance is moved in one transaction (order row, then instance, the lock order
used everywhere), so evacuating twice, or staff and the worker at once, moves it once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from orders.core import activity
from orders.core.emails import send_order_email_on_commit
from orders.core.provisioning import delete_vm, provision_again
from orders.fleet.placement import place_again
from orders.models import Activity, Host, Instance, Order
from vmbackend.protocol import topology

log = logging.getLogger(__name__)

MOVED_MESSAGE = (
    "The host your server ran on stopped answering, so we are re-creating your server on "
    "another host: same user name and password, a new address (shown here when it is ready). "
    "Data on the old server (queues, messages, settings) is lost."
)
# Orders whose VM is wanted and paid up: a past-due order keeps its state until it is settled.
MOVABLE_ORDERS = Order.IN_GOOD_STANDING | {Order.Status.FAILED}


def host_down_since(instance: Instance | None) -> datetime | None:
    """When the host of this live server went silent (None: it answers, or no host yet)."""
    if instance is None or not instance.host_id or instance.status not in Instance.LIVE:
        return None
    return (
        Host.objects.filter(host_id=instance.host_id, silent_since__isnull=False)
        .values_list("silent_since", flat=True)
        .first()
    )


def on_host(host_id: str) -> Q:
    """Instances that have (or were promised) a VM on `host_id`."""
    return Q(host_id=host_id, status__in=Instance.LIVE | {Instance.Status.LOST}) | Q(
        placed_on=host_id, status=Instance.Status.REQUESTED, host_id=""
    )


def evacuate_host(*, host_id: str, by: str) -> int:
    """Re-create every VM of `host_id` elsewhere; how many were moved."""
    moved = 0
    for pk in list(Instance.objects.filter(on_host(host_id)).values_list("pk", flat=True)):
        if evacuate_instance(instance_pk=pk, host_id=host_id, by=by):
            moved += 1
    log.warning("event=host_evacuated host_id=%s moved=%s by=%s", host_id, moved, by)
    return moved


def evacuate_instance(*, instance_pk: int, host_id: str, by: str) -> bool:
    """Move one instance off `host_id`; False when it is not there (any more) or its order is
    not one to move."""
    with transaction.atomic():
        order_pk = (
            Instance.objects.filter(pk=instance_pk).values_list("order_id", flat=True).first()
        )
        if order_pk is None:
            return False
        order = Order.objects.select_for_update().select_related("plan", "user").get(pk=order_pk)
        instance = Instance.objects.select_for_update().get(pk=instance_pk)
        if not Instance.objects.filter(on_host(host_id), pk=instance.pk).exists():
            return False
        if order.status not in MOVABLE_ORDERS:
            return False
        instance.order = order
        declined = [*instance.declined_by, host_id]
        if instance.status == Instance.Status.REQUESTED:
            # Placed there, never taken: place it again (nothing ran, nothing to tell).
            place_again(instance, host_id, reason=f"evacuated by {by}")
            return True
        old_vm_id = instance.vm_id
        reason = f"host {host_id} stopped answering; re-created on another host"
        if instance.status != Instance.Status.LOST:
            instance.move_to(Instance.Status.LOST, failure_reason=reason)
        if order.status != Order.Status.FAILED:
            order.move_to(Order.Status.FAILED)
        # A host that comes back deletes its stale copy (its own queue keeps the command).
        delete_vm(instance=instance, vm_id=old_vm_id, routing_key=topology.host_key(host_id))
        provision_again(
            order=order,
            instance=instance,
            placed_on="",
            placement_tries=0,
            declined_by=declined,
            unplaced_since=None,
        )
        activity.record(order=order, kind=Activity.Kind.LOST, message=MOVED_MESSAGE)
        send_order_email_on_commit(order=order, kind="server_moved", context={})
        log.warning(
            "event=vm_evacuated order_id=%s instance_id=%s old_instance_id=%s host_id=%s by=%s",
            order.public_id,
            instance.public_id,
            old_vm_id,
            host_id,
            by,
        )
        return True


def evacuate_silent_hosts(now: datetime) -> int:
    """The event worker's step: evacuate hosts silent longer than HOST_EVACUATE_AFTER seconds
    (0: off). How many instances were moved."""
    after = settings.HOST_EVACUATE_AFTER
    if not after:
        return 0
    cutoff = now - timedelta(seconds=after)
    moved = 0
    for host_id in Host.objects.filter(silent_since__lte=cutoff).values_list("host_id", flat=True):
        if Instance.objects.filter(on_host(host_id)).exists():
            moved += evacuate_host(host_id=host_id, by="automatic")
    return moved
