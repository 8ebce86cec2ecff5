"""Placement: which host gets a paid order's VM (docs/fleet.md), the shop's half of the fleet.

What is left on each host, and so what is for sale, is orders/fleet/rooms.py; here the relay's
step that places one create-vm, and a host's decline.

Nova's shape, small: the hosts' resources come from their heartbeats (`Host` rows); a host is a
candidate when it is alive (heard within HOST_HEARTBEAT_TIMEOUT), not draining, reports its
resources, and the VM fits what is left on it (filters); the candidates are ordered by free
memory, fullest first (`pack`) or emptiest first (`spread`, WARREN_PLACEMENT) (the weigher).

What is left on a host = its totals minus the larger of what it reported as used and what the
shop knows lives there (instances accepted on it since that heartbeat are in the second), minus
its claims: instances still `requested` whose create-vm was placed on it (`Instance.placed_on`).
The relay places one create-vm at a time under the host's row lock (select_for_update) and
claims with a conditional UPDATE of the instance, in one transaction with the outbox row's new
routing key, so two placements never both count the same room. The host checks the fit again
(vmbackend/capacity.py) and declines what does not fit (`instance.declined`): the instance is
placed again elsewhere (not on the hosts that declined it), at most PLACEMENT_TRIES times, then
it waits on the shared create-vm queue, which every host with room consumes. Never dropped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from orders.core import activity
from orders.fleet.rooms import SHARED, fleet_known, live_hosts, rooms, size_of, weigh
from orders.models import Activity, Host, Instance, Order, OutboxMessage
from vmbackend.protocol import messages, topology

log = logging.getLogger(__name__)

WAITING_MESSAGE = (
    "All our servers are full right now, so yours is waiting for room. It starts by itself as "
    "soon as a server has room; you can cancel any time."
)


# -- the relay's step ----------------------------------------------------------------------------


def route(row: OutboxMessage, now: datetime | None = None) -> str:
    """The routing key to publish a create-vm row with: `host.<id>` of the host it is placed on
    (claimed in this transaction), or `create-vm` (the shared queue). Rows that are not a fresh
    create-vm (already placed, or no instance) keep theirs."""
    if (
        row.routing_key != messages.CREATE_VM
        or row.instance_id is None
        or settings.PLACEMENT == SHARED
    ):
        return row.routing_key
    now = now or timezone.now()
    with transaction.atomic():
        instance = (
            Instance.objects.select_related("order", "order__plan")
            .filter(pk=row.instance_id)
            .first()
        )
        vm_id = (row.body.get("options") or {}).get("vm-id")
        if (
            instance is None
            or instance.status != Instance.Status.REQUESTED
            or instance.vm_id != vm_id
            or instance.placed_on
        ):
            return row.routing_key
        if instance.placement_tries >= settings.PLACEMENT_TRIES or not fleet_known(now):
            _left_to_shared_queue(instance, now, tried_out=instance.placement_tries > 0)
            return row.routing_key
        host_id = _claim(instance, now)
        if host_id is None:
            _left_to_shared_queue(instance, now, tried_out=False)
            return row.routing_key
        key = topology.host_key(host_id)
        OutboxMessage.objects.filter(pk=row.pk).update(routing_key=key)
        row.routing_key = key
        return key


def _claim(instance: Instance, now: datetime) -> str | None:
    """Claim room for `instance` on the best candidate host; its id, or None (nothing fits)."""
    size = size_of(instance)
    declined = set(instance.declined_by or [])
    hosts = [h for h in live_hosts(now) if h.host_id not in declined]
    for candidate in weigh([r for r in rooms(hosts) if r.fits(size)], settings.PLACEMENT):
        # Race: another placement may be claiming on this host right now; its row lock
        # serialises us, and the room is read again under it.
        locked = Host.objects.select_for_update().filter(pk=candidate.host.pk).first()
        if locked is None or locked.draining:
            continue
        (room,) = rooms([locked])
        if not room.fits(size):
            continue
        # Compare-and-set: only a requested, unplaced instance is claimed (a cancel or a second
        # relay may have moved it).
        claimed = Instance.objects.filter(
            pk=instance.pk, status=Instance.Status.REQUESTED, placed_on=""
        ).update(
            placed_on=locked.host_id,
            placement_tries=F("placement_tries") + 1,
            unplaced_since=None,
        )
        if not claimed:
            return None
        log.info(
            "event=vm_placed order_id=%s instance_id=%s host_id=%s memory_mb=%s strategy=%s",
            instance.order.public_id,
            instance.public_id,
            locked.host_id,
            size.memory_mb,
            settings.PLACEMENT,
        )
        return locked.host_id
    return None


def _left_to_shared_queue(instance: Instance, now: datetime, *, tried_out: bool) -> None:
    """No live host has room (or every try was declined): the create-vm waits on the shared
    queue. Told once to the customer (timeline, order page) and marked for staff."""
    if instance.unplaced_since is not None or not fleet_known(now):
        return
    Instance.objects.filter(pk=instance.pk).update(unplaced_since=now)
    instance.unplaced_since = now
    activity.record(
        order=instance.order, kind=Activity.Kind.WAITING_FOR_ROOM, message=WAITING_MESSAGE
    )
    log.warning(
        "event=vm_unplaced order_id=%s instance_id=%s tried_out=%s",
        instance.order.public_id,
        instance.public_id,
        tried_out,
    )


def unplace_unroutable(row: OutboxMessage) -> bool:
    """The broker had no queue for the host a create-vm was placed on (the host was removed):
    drop the claim, never try that host again for it, and route the row afresh. False for any
    other row."""
    host_id = row.routing_key.removeprefix("host.")
    if (
        row.body.get("command") != messages.CREATE_VM
        or not row.routing_key.startswith("host.")
        or row.instance_id is None
    ):
        return False
    with transaction.atomic():
        instance = Instance.objects.select_for_update().filter(pk=row.instance_id).first()
        if instance is None or instance.placed_on != host_id:
            return False
        Instance.objects.filter(pk=instance.pk).update(
            placed_on="", declined_by=[*instance.declined_by, host_id]
        )
        OutboxMessage.objects.filter(pk=row.pk).update(routing_key=messages.CREATE_VM)
    row.routing_key = messages.CREATE_VM
    log.warning("event=vm_unroutable instance_id=%s host_id=%s", instance.public_id, host_id)
    return True


# -- a host's answer -----------------------------------------------------------------------------


def apply_declined(*, instance_id: uuid.UUID | None, host_id: str, reason: str) -> str:
    """instance.declined: the host would not take the create-vm placed on it. Place it again
    (a new outbox row; the relay routes it), never on a host that declined it."""
    with transaction.atomic():
        if instance_id is None:  # the parser requires one
            return "unknown_instance"
        order_pk = (
            Instance.objects.filter(public_id=instance_id)
            .values_list("order_id", flat=True)
            .first()
        )
        if order_pk is None:
            return "unknown_instance"
        # The order row first, then the instance (the lock order used everywhere).
        Order.objects.select_for_update().get(pk=order_pk)
        instance = (
            Instance.objects.select_for_update()
            .select_related("order", "order__plan")
            .get(order_id=order_pk)
        )
        if (
            str(instance.public_id) != str(instance_id)
            or instance.status != Instance.Status.REQUESTED
            or instance.placed_on != host_id
        ):
            return "stale"  # a repeat, or the instance moved on
        place_again(instance, host_id, reason=reason)
        return "replaced"


def replace_from_silent_hosts(silent_host_ids: Iterable[str]) -> int:
    """Create-vms placed on hosts that went silent before taking them (still requested: no
    instance.accepted): nobody consumes that host's queue, so each is placed again elsewhere as
    if the host had declined. Should the host come back and take its old copy after all, that is
    a duplicate copy, which the event worker already deletes (host_events). Returns how many."""
    silent = list(silent_host_ids)
    if not silent:
        return 0
    moved = 0
    stuck = Instance.objects.filter(
        status=Instance.Status.REQUESTED, placed_on__in=silent
    ).values_list("order_id", "placed_on")
    for order_pk, host_id in list(stuck):
        with transaction.atomic():
            Order.objects.select_for_update().get(pk=order_pk)  # the usual lock order
            instance = (
                Instance.objects.select_for_update()
                .select_related("order", "order__plan")
                .get(order_id=order_pk)
            )
            # Compare again under the lock: it may have been accepted or moved meanwhile.
            if instance.status == Instance.Status.REQUESTED and instance.placed_on == host_id:
                place_again(instance, host_id, reason="the host went silent before taking it")
                moved += 1
    return moved


def place_again(instance: Instance, host_id: str, *, reason: str) -> None:
    """Drop the claim on `host_id`, never try that host again for this instance, and queue a
    new create-vm for the relay to route. Runs inside the caller's transaction with both rows
    locked."""
    from orders.core.provisioning import CREATE_VM, create_vm_body, enqueue

    declined = [*instance.declined_by, host_id]
    Instance.objects.filter(pk=instance.pk).update(placed_on="", declined_by=declined)
    instance.placed_on, instance.declined_by = "", declined
    enqueue(routing_key=CREATE_VM, body=create_vm_body(instance=instance), instance=instance)
    log.warning(
        "event=vm_placed_again order_id=%s instance_id=%s host_id=%s tries=%s reason=%r",
        instance.order.public_id,
        instance.public_id,
        host_id,
        instance.placement_tries,
        reason,
    )


def waiting_for_room() -> Q:
    """Instances a paid order is waiting on with no host placed (the admin's filter)."""
    return Q(status=Instance.Status.REQUESTED, unplaced_since__isnull=False)
