"""Applying the host daemons' events (docs/protocol.md) to Instances, Orders and Hosts.

Not to be confused with orders/billing/webhooks.py, which applies Stripe's events.

`handle_message(body)` is one step: parse (vmbackend.protocol.messages.parse_event, the contract's one
parser), apply in one transaction. What each event does to an instance and its order is the table
`HOST_EVENT_TRANSITIONS` in orders/models/instances.py; this module reads it and runs the side
effects. The consumer (`EventConsumer` in orders/messaging/consumer.py, run by `manage.py
consume_events`) acks a message only after that transaction committed. Idempotent: an event whose
(host_id, seq) is not newer than the last one applied to its instance changes nothing, and status
changes follow the allowed transitions only.

Marking silent hosts is orders/fleet/hosts.py.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import (
    IntegrityError,
    transaction,
)
from django.utils import timezone

from orders.console import outcomes
from orders.core import activity
from orders.core.provisioning import delete_vm, forget_credentials, resend_deletion
from orders.fleet import placement
from orders.messaging import foreign_vms
from orders.models import (
    EFFECT_FORGET_CREDENTIALS,
    EFFECT_RECORD_CRASH,
    EFFECT_RESEND_DELETION,
    EFFECT_UPDATE_STAGE,
    EFFECT_UPDATE_URLS,
    HOST_EVENT_TRANSITIONS,
    RECORDED_ONLY,
    Host,
    Instance,
    Order,
    wake_order_page,
)
from orders.monitoring import metrics
from vmbackend.protocol import messages, topology
from vmbackend.protocol.messages import Event, MalformedEvent

log = logging.getLogger(__name__)

__all__ = ["MalformedEvent", "RefusedEvent", "apply_event", "handle_message"]


class RefusedEvent(Exception):
    """An event from a host that has no say about the instance it names (dead-lettered)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def handle_message(body: bytes, *, now: datetime | None = None) -> str:
    """Parse and apply one event whose sender is trusted (the event worker checks the broker
    user first: orders/messaging/senders.py). Returns what happened (for logs and tests)."""
    return apply_event(messages.parse_event(body), now=now)


def apply_event(event: Event, *, now: datetime | None = None) -> str:
    """Apply one parsed event whose sender is its host. Raises RefusedEvent."""
    if event.type == messages.INSTANCE_METRICS:
        return apply_metrics_event(event)
    if event.type == messages.HEARTBEAT:
        result = apply_heartbeat(event, now=now or timezone.now())
    elif event.type == messages.INSTANCE_DECLINED:  # orders/fleet/placement.py: placed again
        result = placement.apply_declined(
            instance_id=event.instance_id, host_id=event.host_id, reason=event.reason
        )
    elif event.is_instance_event:
        result = apply_instance_event(event)
    else:
        result = "unhandled_type"  # a newer daemon's event: not an error
    log.info(
        "event=host_event type=%s instance_id=%s host_id=%s seq=%s result=%s",
        event.type,
        event.instance_id or "-",
        event.host_id,
        event.seq,
        result,
    )
    return result


def apply_metrics_event(event: Event) -> str:
    """instance.metrics: a sample for the graphs and alarms (orders/monitoring/metrics.py). Outside
    the (host_id, seq) path: it neither reads nor moves last_event_seq, and keeps no receipt."""
    if event.metrics is None or event.instance_id is None:  # the parser sets both
        return "ignored"
    result = metrics.apply_metrics(
        instance_id=event.instance_id,
        host_id=event.host_id,
        at=activity.event_time(event),
        metrics=event.metrics,
    )
    # DEBUG: every VM reports every 30 s; the INFO log stays about changes.
    log.debug(
        "event=host_event type=%s instance_id=%s host_id=%s result=%s",
        event.type,
        event.instance_id,
        event.host_id,
        result,
    )
    return result


# The heartbeat's resource fields kept on the Host row (the free ones follow from these).
HEARTBEAT_HOST_FIELDS = (
    "memory_total_mb",
    "memory_used_mb",
    "vcpus_total",
    "vcpus_used",
    "disk_total_gb",
    "disk_used_gb",
)


def apply_heartbeat(event: Event, *, now: datetime) -> str:
    fields = {
        "last_heartbeat_at": now,
        "capacity": event.capacity,
        "running": event.running,
        "free_slots": event.free_slots,
        "version": event.daemon_version,
        "pool": event.pool,
        "silent_since": None,
        **{name: event.resources.get(name, 0) for name in HEARTBEAT_HOST_FIELDS},
    }
    # Race: two consumers may see the first heartbeat of a new host at once; the unique host_id
    # makes one create fail, and that one updates instead.
    if Host.objects.filter(host_id=event.host_id).update(**fields):
        return "applied"
    try:
        with transaction.atomic():
            Host.objects.create(host_id=event.host_id, **fields)
    except IntegrityError:
        Host.objects.filter(host_id=event.host_id).update(**fields)
    return "applied"


def apply_instance_event(event: Event) -> str:
    if event.instance_id is None:  # the parser requires one on instance events
        return "unknown_instance"
    with transaction.atomic():
        order_pk = (
            Instance.objects.filter(public_id=event.instance_id)
            .values_list("order_id", flat=True)
            .first()
        )
        if order_pk is None:  # never ours, or replaced by a staff retry
            return foreign_vms.unknown_vm(event)
        # Race: webhooks (cancel), staff (retry, cancel) and this consumer all change an order and
        # its instance. Everyone locks the order row first, then the instance.
        order = Order.objects.select_for_update().select_related("plan").get(pk=order_pk)
        instance = Instance.objects.select_for_update().get(order_id=order_pk)
        if instance.public_id != event.instance_id:
            return foreign_vms.unknown_vm(event)
        if instance.host_id and instance.host_id != event.host_id:
            if not foreign_vms.could_have_copy(instance, event.host_id):
                # Race-free: the instance is locked. Nothing is changed, nothing is deleted.
                raise RefusedEvent(
                    f"host {event.host_id} does not own instance {instance.public_id} "
                    f"(owner {instance.host_id}) and was never sent its create-vm"
                )
            return _from_other_host(order, instance, event)
        if event.seq <= instance.last_event_seq:
            return "stale"
        _record_seq(order, instance, event)
        wake_order_page(order)  # stage, URLs, console outcome: the page re-reads at commit
        return apply_step(order, instance, event)


def _record_seq(order: Order, instance: Instance, event: Event) -> None:
    Instance.objects.filter(pk=instance.pk).update(last_event_seq=event.seq, host_id=event.host_id)
    instance.last_event_seq, instance.host_id = event.seq, event.host_id
    instance.order = order


def _from_other_host(order: Order, instance: Instance, event: Event) -> str:
    """An event about our VM from a host that is not the one that has it: a duplicate copy.

    Two hosts boot the same vm-id when a create-vm was published twice (two relays, or a relay
    killed between the broker's confirm and marking the row) or redelivered after a host died
    before acknowledging it. The shop keeps exactly one copy (docs/orders.md, Duplicates):

    - a ready copy wins over one that is not ready yet: a ready from the other host while ours is
      requested/booting/lost moves the instance there, and the old host gets a delete-vm;
    - once ours is settled (ready, or the order ended: failed, deleting, deleted), every event
      from another host that still has a copy sends THAT host a delete-vm (routing key
      host.<id>: only it deletes, and only its copy);
    - while neither copy is ready, both boot on; whichever is ready first wins.
    """
    owner = instance.host_id
    if (
        event.type == messages.INSTANCE_READY
        and instance.status in Instance.NOT_YET_READY
        and not foreign_vms.deletion_sent(instance, event.host_id)
    ):
        _record_seq(order, instance, event)
        delete_vm(instance=instance, vm_id=instance.vm_id, routing_key=topology.host_key(owner))
        log.warning(
            "event=instance_moved_host order_id=%s instance_id=%s from=%s to=%s",
            order.public_id,
            instance.public_id,
            owner,
            instance.host_id,
        )
        return apply_step(order, instance, event)
    settled = instance.status not in Instance.NOT_YET_READY
    if event.type in foreign_vms.COPY_GONE or not settled:
        log.warning(
            "event=event_from_other_host order_id=%s instance_id=%s host_id=%s owner=%s type=%s",
            order.public_id,
            instance.public_id,
            event.host_id,
            owner,
            event.type,
        )
        return "other_host"
    delete_vm(instance=instance, vm_id=instance.vm_id, routing_key=topology.host_key(event.host_id))
    log.warning(
        "event=duplicate_vm_deleted order_id=%s instance_id=%s host_id=%s owner=%s type=%s",
        order.public_id,
        instance.public_id,
        event.host_id,
        owner,
        event.type,
    )
    return "duplicate_deleted"


def _restart_fields(instance: Instance, event: Event) -> dict[str, Any]:
    """instance.ready of a server its host was restarting: the restart is done."""
    return {"last_restart_at": activity.event_time(event)} if instance.is_restarting else {}


def _instance_fields(event: Event, to: str, instance: Instance) -> dict[str, Any]:
    """What the event carries into the instance row when it moves it to `to`."""
    if to == Instance.Status.READY:
        return (
            {
                "management_url": event.management_url,
                "amqp_url": event.amqp_url,
                "failure_reason": "",
                "ready_at": timezone.now(),
            }
            | ({"admin_username": event.admin_username} if event.admin_username else {})
            | _restart_fields(instance, event)
        )
    if to in (Instance.Status.FAILED, Instance.Status.LOST):
        default = "deleted on the host" if event.type == messages.INSTANCE_DELETED else "lost"
        reason = event.reason or (default if to == Instance.Status.LOST else "unknown")
        return {"failure_reason": reason}
    if to == Instance.Status.DELETED and event.reason:
        return {"failure_reason": event.reason}
    if to == Instance.Status.BOOTING:
        if event.type in (messages.INSTANCE_STARTED, messages.INSTANCE_RESTARTING):
            return {"stage": Instance.Stage.VM_STARTING, "failure_reason": ""}
        return {"stage": event.stage} if event.stage else {}
    return {}


def _update(instance: Instance, **fields: Any) -> None:
    """Change fields of the locked instance without a status change."""
    Instance.objects.filter(pk=instance.pk).update(**fields, updated_at=timezone.now())
    for name, value in fields.items():
        setattr(instance, name, value)


def apply_step(order: Order, instance: Instance, event: Event) -> str:
    """Apply one new event to the locked order and instance: a console command's outcome
    (orders/console/commands.py), or the table's step; then the order's timeline
    (orders/core/activity.py)."""
    if event.type in outcomes.OUTCOME_EVENTS:
        return outcomes.apply_outcome(order, instance, event)
    before = activity.Before.of(instance)
    result = _apply_table_step(order, instance, event)
    if result == "applied":
        if event.type == messages.INSTANCE_READY and instance.status == Instance.Status.READY:
            outcomes.after_ready(order, instance, event)
        activity.after_host_event(order, instance, event, before)
    return result


def _apply_table_step(order: Order, instance: Instance, event: Event) -> str:
    """Apply HOST_EVENT_TRANSITIONS[(type, instance status)] to the locked order and instance."""
    step = HOST_EVENT_TRANSITIONS.get((event.type, instance.status))
    if step is None:
        return "applied" if event.type in RECORDED_ONLY else "ignored"
    if step.effect == EFFECT_RESEND_DELETION:
        resend_deletion(instance=instance)
        return "deletion_resent"
    if step.effect == EFFECT_UPDATE_URLS:
        _update(
            instance,
            management_url=event.management_url,
            amqp_url=event.amqp_url,
            **_restart_fields(instance, event),
        )
    if step.effect == EFFECT_RECORD_CRASH:
        # Attempt 2, 3 of the same crash: still the one stop the customer saw.
        crash = event.attempt <= 1 or not instance.is_restarting
        _update(
            instance,
            failure_reason=event.reason,
            **(
                {
                    "last_crash_at": activity.event_time(event),
                    "restart_count": instance.restart_count + 1,
                }
                if crash
                else {}
            ),
        )
        log.warning(
            "event=instance_restarting order_id=%s instance_id=%s attempt=%s reason=%r",
            order.public_id,
            instance.public_id,
            event.attempt,
            event.reason,
        )
    if step.effect == EFFECT_UPDATE_STAGE:
        _update(instance, stage=event.stage)
    if step.instance_to is not None:
        instance.move_to(step.instance_to, **_instance_fields(event, step.instance_to, instance))
    if step.effect == EFFECT_FORGET_CREDENTIALS:
        forget_credentials(instance=instance)
    if step.order_to is not None and order.status in step.order_from:
        order.move_to(step.order_to)
    if step.instance_to == Instance.Status.READY:
        log.info(
            "event=instance_ready order_id=%s instance_id=%s", order.public_id, instance.public_id
        )
    elif step.instance_to in (Instance.Status.FAILED, Instance.Status.LOST):
        log.warning(
            "event=instance_%s order_id=%s instance_id=%s reason=%r",
            step.instance_to,
            order.public_id,
            instance.public_id,
            instance.failure_reason,
        )
    return "applied"
