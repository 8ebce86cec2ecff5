"""Applying the host daemons' events (docs/protocol.md) to Instances, Orders and Hosts.

`handle_message(body)` is one step: parse, validate, apply in one transaction. The consumer
(`EventConsumer`, run by `manage.py consume_events`) acks a message only after that transaction
committed. Idempotent: an event whose (host_id, seq) is not newer than the last one applied to its
instance changes nothing, and status changes follow the allowed transitions only.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pika.exceptions
from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone
from pika.adapters.blocking_connection import BlockingChannel

from orders import broker
from orders.models import Host, Instance, Order
from orders.provisioning import delete_vm_body, enqueue, forget_credentials, resend_deletion

log = logging.getLogger(__name__)

I = Instance.Status  # noqa: E741
O = Order.Status  # noqa: E741

INSTANCE_TYPES = {
    "instance.accepted",
    "instance.progress",
    "instance.ready",
    "instance.failed",
    "instance.stopped",
    "instance.started",
    "instance.deleted",
    "instance.lost",
}
HEARTBEAT = "host.heartbeat"


class MalformedEvent(Exception):
    """The message is not a valid event of protocol version 1; it is dead-lettered."""


# -- parsing ----------------------------------------------------------------------------------


def _str(event: dict[str, Any], name: str, *, required: bool = True, limit: int = 500) -> str:
    value = event.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        raise MalformedEvent(f"{name} must be a non-empty string of at most {limit} characters")
    return value


def _count(event: dict[str, Any], name: str) -> int:
    value = event.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedEvent(f"{name} must be a non-negative integer")
    return value


def parse_event(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent("body is not JSON") from exc
    if not isinstance(event, dict):
        raise MalformedEvent("body is not a JSON object")
    if event.get("version", 1) != 1:
        raise MalformedEvent(f"unsupported version {event.get('version')!r}")
    event_type = _str(event, "type", limit=100)
    _str(event, "host_id", limit=100)
    if event_type in INSTANCE_TYPES:
        try:
            event["instance_id"] = uuid.UUID(_str(event, "instance_id", limit=100))
        except ValueError as exc:
            raise MalformedEvent("instance_id is not a UUID") from exc
        if "seq" not in event:
            raise MalformedEvent("seq is missing")
        _count(event, "seq")
    if event_type == "instance.ready":
        for name in ("management_url", "amqp_url"):
            _str(event, name)
        _str(event, "admin_username", required=False, limit=100)
    if event_type == "instance.progress" and event.get("stage") not in Instance.Stage.values:
        raise MalformedEvent(f"unknown stage {event.get('stage')!r}")
    if event_type == HEARTBEAT:
        for name in ("capacity", "running", "free_slots"):
            _count(event, name)
    return event


# -- applying ---------------------------------------------------------------------------------


def handle_message(body: bytes, *, now: datetime | None = None) -> str:
    """Parse and apply one event. Returns what happened (for logs and tests)."""
    event = parse_event(body)
    event_type = event["type"]
    if event_type == HEARTBEAT:
        result = apply_heartbeat(event, now=now or timezone.now())
    elif event_type in INSTANCE_TYPES:
        result = apply_instance_event(event)
    else:
        result = "unhandled_type"  # a newer daemon's event: not an error
    log.info(
        "event=host_event type=%s instance_id=%s host_id=%s seq=%s result=%s",
        event_type,
        event.get("instance_id") or "-",
        event["host_id"],
        event.get("seq", "-"),
        result,
    )
    return result


def apply_heartbeat(event: dict[str, Any], *, now: datetime) -> str:
    fields = {
        "last_heartbeat_at": now,
        "capacity": event.get("capacity", 0),
        "running": event.get("running", 0),
        "free_slots": event.get("free_slots", 0),
        "version": str(event.get("daemon_version") or "")[:50],
        "silent_since": None,
    }
    # Race: two consumers may see the first heartbeat of a new host at once; the unique host_id
    # makes one create fail, and that one updates instead.
    if Host.objects.filter(host_id=event["host_id"]).update(**fields):
        return "applied"
    try:
        with transaction.atomic():
            Host.objects.create(host_id=event["host_id"], **fields)
    except IntegrityError:
        Host.objects.filter(host_id=event["host_id"]).update(**fields)
    return "applied"


def apply_instance_event(event: dict[str, Any]) -> str:
    vm_id: uuid.UUID = event["instance_id"]
    host_id: str = event["host_id"]
    seq: int = event["seq"]
    with transaction.atomic():
        order_pk = (
            Instance.objects.filter(public_id=vm_id).values_list("order_id", flat=True).first()
        )
        if order_pk is None:
            return "unknown_instance"  # never ours, or replaced by a staff retry
        # Race: webhooks (cancel), staff (retry, cancel) and this consumer all change an order and
        # its instance. Everyone locks the order row first, then the instance.
        order = Order.objects.select_for_update().select_related("plan").get(pk=order_pk)
        instance = Instance.objects.select_for_update().get(order_id=order_pk)
        if instance.public_id != vm_id:
            return "unknown_instance"
        if instance.host_id and instance.host_id != host_id:
            return _from_other_host(order, instance, event)
        if seq <= instance.last_event_seq:
            return "stale"
        Instance.objects.filter(pk=instance.pk).update(last_event_seq=seq, host_id=host_id)
        instance.last_event_seq, instance.host_id = seq, host_id
        instance.order = order
        return APPLY[event["type"]](order, instance, event)


def _from_other_host(order: Order, instance: Instance, event: dict[str, Any]) -> str:
    """An event about our VM from a host that is not the one that took it.

    This happens when a create-vm was redelivered to a second host (the first one died before
    acknowledging it). A working VM wins: a ready from the new host while ours is not ready moves
    the instance there, and the old host gets a delete-vm addressed to it alone.
    """
    old_host = instance.host_id
    if event["type"] != "instance.ready" or instance.status not in (I.REQUESTED, I.BOOTING, I.LOST):
        log.warning(
            "event=event_from_other_host order_id=%s instance_id=%s host_id=%s owner=%s type=%s",
            order.public_id,
            instance.public_id,
            event["host_id"],
            old_host,
            event["type"],
        )
        return "other_host"
    Instance.objects.filter(pk=instance.pk).update(
        last_event_seq=event["seq"], host_id=event["host_id"]
    )
    instance.last_event_seq, instance.host_id = event["seq"], event["host_id"]
    instance.order = order
    enqueue(
        routing_key=f"host.{old_host}", body=delete_vm_body(vm_id=instance.vm_id), instance=instance
    )
    log.warning(
        "event=instance_moved_host order_id=%s instance_id=%s from=%s to=%s",
        order.public_id,
        instance.public_id,
        old_host,
        instance.host_id,
    )
    return _on_ready(order, instance, event)


def _order_to(order: Order, to: str, *, sources: tuple[str, ...]) -> None:
    if order.status in sources:
        order.move_to(to)


def _on_accepted(order: Order, instance: Instance, event: dict[str, Any]) -> str:
    if instance.status == I.DELETING:
        # Cancelled before any host had it: the first delete-vm reached nobody.
        resend_deletion(instance=instance)
        return "deletion_resent"
    if instance.status != I.REQUESTED:
        return "ignored"
    instance.move_to(I.BOOTING)
    _order_to(order, O.PROVISIONING, sources=(O.PAID,))
    return "applied"


def _on_progress(order: Order, instance: Instance, event: dict[str, Any]) -> str:
    if instance.status in (I.REQUESTED, I.LOST):
        instance.move_to(I.BOOTING, stage=event["stage"])
    elif instance.status == I.BOOTING:
        Instance.objects.filter(pk=instance.pk).update(
            stage=event["stage"], updated_at=timezone.now()
        )
        instance.stage = event["stage"]
    else:
        return "ignored"
    _order_to(order, O.PROVISIONING, sources=(O.PAID, O.FAILED))
    return "applied"


def _on_ready(order: Order, instance: Instance, event: dict[str, Any]) -> str:
    if instance.status == I.DELETING:
        # The VM finished booting after the order was cancelled: delete it (again).
        resend_deletion(instance=instance)
        return "deletion_resent"
    if instance.status == I.READY:
        # Ready again after a stop/start on its host: the forwarded ports may have changed.
        fields = {"management_url": event["management_url"], "amqp_url": event["amqp_url"]}
        Instance.objects.filter(pk=instance.pk).update(**fields, updated_at=timezone.now())
        for name, value in fields.items():
            setattr(instance, name, value)
        return "applied"
    if instance.status not in (I.REQUESTED, I.BOOTING, I.LOST):
        return "ignored"
    instance.move_to(
        I.READY,
        management_url=event["management_url"],
        amqp_url=event["amqp_url"],
        admin_username=event.get("admin_username") or instance.admin_username,
        failure_reason="",
        ready_at=timezone.now(),
    )
    # past_due stays past_due; failed only happens here for a lost VM its host revived.
    _order_to(order, O.READY, sources=(O.PAID, O.PROVISIONING, O.FAILED))
    log.info("event=instance_ready order_id=%s instance_id=%s", order.public_id, instance.public_id)
    return "applied"


def _on_failed(order: Order, instance: Instance, event: dict[str, Any]) -> str:
    reason = str(event.get("reason") or "unknown")[:2000]
    if instance.status == I.DELETING:
        # The host gave up on a VM we were deleting anyway, and cleaned it up.
        instance.move_to(I.DELETED, failure_reason=reason)
        forget_credentials(instance=instance)
        _order_to(order, O.DELETED, sources=(O.DELETING,))
        return "applied"
    return _end_live_instance(order, instance, I.FAILED, reason)


def _on_deleted(order: Order, instance: Instance, event: dict[str, Any]) -> str:
    if instance.status == I.DELETING:
        instance.move_to(I.DELETED)
        forget_credentials(instance=instance)
        _order_to(order, O.DELETED, sources=(O.DELETING,))
        return "applied"
    if instance.status in (I.REQUESTED, I.BOOTING, I.READY):
        # Someone deleted the VM on the host (an operator's script): the customer has nothing.
        return _on_lost(order, instance, {"reason": "deleted on the host"})
    return "ignored"


def _on_lost(order: Order, instance: Instance, event: dict[str, Any]) -> str:
    # A deleting instance is ignored there: the delete-vm cleans up what is left.
    return _end_live_instance(order, instance, I.LOST, str(event.get("reason") or "lost")[:2000])


def _end_live_instance(order: Order, instance: Instance, status: str, reason: str) -> str:
    """A live instance has no working VM any more (failed or lost): the order fails with the
    reason, which staff see and can retry."""
    if instance.status not in (I.REQUESTED, I.BOOTING, I.READY):
        return "ignored"
    instance.move_to(status, failure_reason=reason)
    _order_to(order, O.FAILED, sources=tuple(Order.LIVE))
    log.warning(
        "event=instance_%s order_id=%s instance_id=%s reason=%r",
        status, order.public_id, instance.public_id, reason,
    )
    return "applied"


def _on_power(order: Order, instance: Instance, event: dict[str, Any]) -> str:
    if event["type"] == "instance.started" and instance.status == I.LOST:
        # The host boots a lost VM again from its disk (an operator's start-vm).
        instance.move_to(I.BOOTING, stage=Instance.Stage.VM_STARTING, failure_reason="")
        _order_to(order, O.PROVISIONING, sources=(O.FAILED,))
    return "applied"  # otherwise recorded by seq only: the shop does not show power state


APPLY: dict[str, Callable[[Order, Instance, dict[str, Any]], str]] = {
    "instance.accepted": _on_accepted,
    "instance.progress": _on_progress,
    "instance.ready": _on_ready,
    "instance.failed": _on_failed,
    "instance.deleted": _on_deleted,
    "instance.lost": _on_lost,
    "instance.stopped": _on_power,
    "instance.started": _on_power,
}


# -- silent hosts -------------------------------------------------------------------------------


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
    return Instance.objects.filter(host_id__in=silent).exclude(status__in=(I.DELETED, I.FAILED))


# -- the consumer ---------------------------------------------------------------------------------


def _refresh_db_connection() -> None:
    # A long-running worker must drop broken or expired connections between messages. Not inside
    # an atomic block (tests run steps inside one).
    if not connection.in_atomic_block:
        close_old_connections()


def dead_letter(channel: BlockingChannel, body: bytes, properties: Any, reason: str) -> None:
    """Publish a rejected event to computing.dlx with the reason, as the daemon does for commands."""
    headers = dict(getattr(properties, "headers", None) or {})
    headers[broker.REJECT_HEADER] = reason[:500]
    message_id = getattr(properties, "message_id", None) or str(uuid.uuid4())
    channel.basic_publish(
        exchange=broker.DLX,
        routing_key="warren.events.store",
        body=body,
        properties=broker.json_properties(message_id, headers=headers),
    )


@dataclass
class EventConsumer:
    url: str | None = None
    prefetch: int = 50
    idle_timeout: float = 1.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    silent_check_interval: float = 15.0
    stop_event: threading.Event = field(default_factory=threading.Event)
    counts: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        self.stop_event.set()

    def handle_delivery(
        self, channel: BlockingChannel, method: Any, properties: Any, body: bytes
    ) -> str:
        """Apply one delivery, then ack it (after the DB commit). Malformed: dead-letter + ack."""
        _refresh_db_connection()
        try:
            result = handle_message(body)
        except MalformedEvent as exc:
            log.warning("event=host_event_rejected reason=%r size=%s", str(exc), len(body))
            dead_letter(channel, body, properties, str(exc))
            result = "rejected"
        except DatabaseError:
            # The database is unavailable: leave the event on the queue and slow down.
            channel.basic_nack(method.delivery_tag, requeue=True)
            raise
        channel.basic_ack(method.delivery_tag)
        self.counts[result] = self.counts.get(result, 0) + 1
        return result

    def run(self, *, once: bool = False) -> dict[str, int]:
        """Consume until stopped; with once, until the queue has been idle for idle_timeout."""
        backoff = self.backoff_initial
        last_silent_check = 0.0
        while not self.stop_event.is_set():
            amqp = None
            try:
                amqp = broker.connect(self.url)
                channel = amqp.channel()
                broker.declare_topology(channel)
                channel.basic_qos(prefetch_count=self.prefetch)
                log.info("event=consumer_connected queue=%s", broker.STORE_EVENTS_QUEUE)
                backoff = self.backoff_initial
                for method, properties, body in channel.consume(
                    broker.STORE_EVENTS_QUEUE, inactivity_timeout=self.idle_timeout
                ):
                    if method is not None:
                        self.handle_delivery(channel, method, properties, body)
                    elif once:
                        break
                    now = timezone.now()
                    if now.timestamp() - last_silent_check > self.silent_check_interval:
                        _refresh_db_connection()
                        mark_silent_hosts(now)
                        last_silent_check = now.timestamp()
                    if self.stop_event.is_set():
                        break
                channel.cancel()
                amqp.close()
                if once:
                    break
            except (pika.exceptions.AMQPError, OSError, DatabaseError) as exc:
                log.warning(
                    "event=consumer_unavailable error=%s retry_in=%.1fs",
                    type(exc).__name__,
                    backoff,
                )
                if amqp is not None and amqp.is_open:
                    try:
                        amqp.close()
                    except (pika.exceptions.AMQPError, OSError):
                        pass
                if once:
                    raise
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
        return self.counts
