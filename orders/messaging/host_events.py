"""Applying the host daemons' events (docs/protocol.md) to Instances, Orders and Hosts.

Not to be confused with orders/billing/webhooks.py, which applies Stripe's events.

`handle_message(body)` is one step: parse (vmbackend.messages.parse_event, the contract's one
parser), apply in one transaction. What each event does to an instance and its order is the table
`HOST_EVENT_TRANSITIONS` in orders/models.py; this module reads it and runs the side effects. The
consumer (`EventConsumer`, run by `manage.py consume_events`) acks a message only after that
transaction committed. Idempotent: an event whose (host_id, seq) is not newer than the last one
applied to its instance changes nothing, and status changes follow the allowed transitions only.

Over 400 lines: the applying half (parse, table, side effects) and the consumer half (the loop,
dead-lettering, the database-outage wait, reading computing.dead) share the dispatch contract.
The consumer loop is the part to move into its own module when this file grows again.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pika.exceptions
from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import QuerySet
from django.utils import timezone
from pika.adapters.blocking_connection import BlockingChannel

from orders.console import commands as console
from orders.core import activity
from orders.core.provisioning import delete_vm, forget_credentials, resend_deletion
from orders.fleet import evacuation, placement
from orders.messaging import broker
from orders.messaging.dead_letters import ROUTING_KEY_HEADER, handle_dead_letter
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
from vmbackend import messages, topology
from vmbackend.backoff import Backoff, run_with_reconnect
from vmbackend.messages import Event, MalformedEvent

log = logging.getLogger(__name__)

__all__ = ["EventConsumer", "MalformedEvent", "dispatch", "handle_message", "mark_silent_hosts"]

# Broker or database trouble: the consumer reconnects (the event stays on the queue).
CONSUMER_ERRORS = (pika.exceptions.AMQPError, OSError, DatabaseError)


def handle_message(body: bytes, *, now: datetime | None = None) -> str:
    """Parse and apply one event. Returns what happened (for logs and tests)."""
    event = messages.parse_event(body)
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
    """instance.metrics: a sample for the graphs and alarms (orders/monitoring/metrics.py). Outside the
    (host_id, seq) path: it neither reads nor moves last_event_seq, and keeps no receipt."""
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
        if order_pk is None:
            return "unknown_instance"  # never ours, or replaced by a staff retry
        # Race: webhooks (cancel), staff (retry, cancel) and this consumer all change an order and
        # its instance. Everyone locks the order row first, then the instance.
        order = Order.objects.select_for_update().select_related("plan").get(pk=order_pk)
        instance = Instance.objects.select_for_update().get(order_id=order_pk)
        if instance.public_id != event.instance_id:
            return "unknown_instance"
        if instance.host_id and instance.host_id != event.host_id:
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


# The other host's copy is gone already: it failed (the host cleaned up) or was deleted.
_COPY_GONE = frozenset({messages.INSTANCE_FAILED, messages.INSTANCE_DELETED})


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
        and not _deletion_sent(instance, event.host_id)
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
    if event.type in _COPY_GONE or not settled:
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


def _deletion_sent(instance: Instance, host_id: str) -> bool:
    """Whether this host was already asked to delete its copy of the instance's current vm-id."""
    bodies = instance.outbox_messages.filter(routing_key=topology.host_key(host_id)).values_list(
        "body", flat=True
    )
    return any((body.get("options") or {}).get("vm-id") == instance.vm_id for body in bodies)


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
    (orders/console/commands.py), or the table's step; then the order's timeline (orders/core/activity.py)."""
    if event.type in console.OUTCOME_EVENTS:
        return console.apply_outcome(order, instance, event)
    before = activity.Before.of(instance)
    result = _apply_table_step(order, instance, event)
    if result == "applied":
        if event.type == messages.INSTANCE_READY and instance.status == Instance.Status.READY:
            console.after_ready(order, instance, event)
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
    return Instance.objects.filter(host_id__in=silent).exclude(status__in=Instance.WITHOUT_VM)


# -- the consumer ---------------------------------------------------------------------------------

REJECTED = "rejected"
# The database is down or restarting: the same event will apply later, so it is retried (with a
# backoff), never dead-lettered. Every other error means this message can never be applied.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)
MAX_ERROR_REASON = 300


def dispatch(body: bytes) -> tuple[str, str]:
    """Apply one event body; returns (result, reason to dead-letter it or "").

    Never raises, except a transient database error (TRANSIENT_DB_ERRORS): a body the parser
    refuses, and an apply that fails for good (DataError, IntegrityError, ValueError,
    OverflowError, ...), both come back as ("rejected", reason)."""
    try:
        return handle_message(body), ""
    except MalformedEvent as exc:
        log.warning("event=host_event_rejected reason=%r size=%s", exc.reason, len(body))
        return REJECTED, exc.reason
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - one event must never stop the worker
        log.exception("event=host_event_failed error=%s size=%s", type(exc).__name__, len(body))
        return (
            REJECTED,
            f"could not be applied: {type(exc).__name__}: {str(exc)[:MAX_ERROR_REASON]}",
        )


def _refresh_db_connection() -> None:
    # A long-running worker must drop broken or expired connections between messages. Not inside
    # an atomic block (tests run steps inside one).
    if not connection.in_atomic_block:
        close_old_connections()


class StopRequested(Exception):
    """The worker was asked to stop while it waited for the database."""


@dataclass
class EventConsumer:
    url: str | None = None
    prefetch: int = 50
    idle_timeout: float = 1.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    silent_check_interval: float = 15.0
    dead_letter_interval: float = 2.0
    # Metrics roll-up and pruning (orders/metrics.rollup_and_prune); settings' default: 60 s.
    maintenance_interval: float = field(
        default_factory=lambda: float(settings.METRICS_MAINTENANCE_INTERVAL)
    )
    last_maintenance: float | None = None  # monotonic time of the last run; None: never ran
    stop_event: threading.Event = field(default_factory=threading.Event)
    counts: dict[str, int] = field(default_factory=dict)
    last_silent_check: float = 0.0
    # Sold-out plans on sale again: their waitlists are emailed (orders/fleet/waitlist.py).
    waitlist_interval: float = 15.0
    last_waitlist_check: float | None = None  # monotonic; None: never ran
    last_dead_letter_check: float = 0.0
    # The database's backoff lives as long as the consumer: a reconnect to the broker does not
    # reset it (that made a poison message loop at the shortest delay); an applied event does.
    db_backoff: Backoff = field(init=False)
    once: bool = False

    def __post_init__(self) -> None:
        self.db_backoff = Backoff(self.backoff_initial, self.backoff_max)

    def stop(self) -> None:
        self.stop_event.set()

    def with_database(self, channel: BlockingChannel, step: Callable[[], Any]) -> Any:
        """Run `step`, retrying it while the database is unavailable (with the consumer's backoff;
        the broker connection keeps its heartbeats meanwhile). With `once`, the error propagates.
        Raises StopRequested when asked to stop while waiting."""
        while True:
            _refresh_db_connection()
            try:
                result = step()
            except TRANSIENT_DB_ERRORS as exc:
                delay = self.db_backoff.next()
                log.warning(
                    "event=database_unavailable error=%s retry_in=%.1fs", type(exc).__name__, delay
                )
                if self.once:
                    raise
                self._sleep(channel, delay)
                continue
            self.db_backoff.reset()
            return result

    def _sleep(self, channel: BlockingChannel, delay: float) -> None:
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if self.stop_event.is_set():
                raise StopRequested
            channel.connection.sleep(min(left, 0.5))  # serves the broker's heartbeats
        if self.stop_event.is_set():
            raise StopRequested

    def handle_delivery(
        self, channel: BlockingChannel, method: Any, properties: Any, body: bytes
    ) -> str:
        """Apply one delivery, then ack it (after the DB commit). One that can never be applied
        is dead-lettered with the reason and acked; the database being down is waited out."""
        try:
            result, reason = self.with_database(channel, lambda: dispatch(body))
        except (StopRequested, *TRANSIENT_DB_ERRORS):
            channel.basic_nack(method.delivery_tag, requeue=True)
            raise
        if reason:
            topology.publish_dead_letter(
                channel,
                topology.EVENTS_STORE_QUEUE,
                body,
                properties,
                reason,
                {ROUTING_KEY_HEADER: getattr(method, "routing_key", "") or ""},
            )
        channel.basic_ack(method.delivery_tag)
        self.counts[result] = self.counts.get(result, 0) + 1
        return str(result)

    def drain_dead_letters(self, channel: BlockingChannel, limit: int = 100) -> int:
        """Read what is in computing.dead now (at most `limit`); each is recorded, then acked."""
        done = 0
        while done < limit:
            method, properties, body = channel.basic_get(topology.DEAD_QUEUE)
            if method is None:
                break
            try:
                result = self.with_database(
                    channel, functools.partial(_record_safely, method, properties, body or b"")
                )
            except (StopRequested, *TRANSIENT_DB_ERRORS):
                channel.basic_nack(method.delivery_tag, requeue=True)
                raise
            channel.basic_ack(method.delivery_tag)
            key = f"dead_letter_{result}"
            self.counts[key] = self.counts.get(key, 0) + 1
            done += 1
        return done

    def run(self, *, once: bool = False) -> dict[str, int]:
        """Consume until stopped; with once, until the queue has been idle for idle_timeout.

        Reconnects with a capped backoff; with once, a broker or database error propagates."""
        self.once = once
        try:
            run_with_reconnect(
                lambda connected: self.serve(connected, once=once),
                stop=self.stop_event,
                errors=CONSUMER_ERRORS,
                on_error=_log_unavailable,
                backoff=Backoff(self.backoff_initial, self.backoff_max),
                reraise=once,
            )
        except StopRequested:
            pass
        return self.counts

    def serve(self, connected: Callable[[], None], *, once: bool = False) -> bool:
        """One broker session. Returns True when `once` is done."""
        amqp = broker.connect(self.url)
        try:
            channel = amqp.channel()
            broker.declare_topology(channel)
            channel.basic_qos(prefetch_count=self.prefetch)
            log.info("event=consumer_connected queue=%s", topology.EVENTS_STORE_QUEUE)
            connected()
            for method, properties, body in channel.consume(
                topology.EVENTS_STORE_QUEUE, inactivity_timeout=self.idle_timeout
            ):
                if method is not None:
                    self.handle_delivery(channel, method, properties, body or b"")
                now = time.monotonic()
                if method is None or now - self.last_dead_letter_check > self.dead_letter_interval:
                    self.last_dead_letter_check = now
                    self.drain_dead_letters(channel)
                if method is None and once:
                    break
                self.check_silent_hosts(channel)
                self.check_waitlist(channel)
                self.maintain(channel)
                if self.stop_event.is_set():
                    break
            channel.cancel()
        finally:
            broker.close_quietly(amqp)
        return once

    def check_silent_hosts(self, channel: BlockingChannel) -> None:
        now = timezone.now()
        if now.timestamp() - self.last_silent_check > self.silent_check_interval:
            silent = self.with_database(channel, lambda: mark_silent_hosts(now))
            self.with_database(
                channel,
                lambda: placement.replace_from_silent_hosts(h.host_id for h in silent),
            )
            self.with_database(channel, lambda: evacuation.evacuate_silent_hosts(now))
            self.last_silent_check = now.timestamp()

    def check_waitlist(self, channel: BlockingChannel) -> int | None:
        """Email the waitlists of plans on sale again, every waitlist_interval seconds (one
        step; tests call it directly). None when it was not time yet."""
        from orders.fleet.waitlist import notify_waitlist

        now = time.monotonic()
        if (
            self.last_waitlist_check is not None
            and now - self.last_waitlist_check < self.waitlist_interval
        ):
            return None
        sent: int = self.with_database(channel, notify_waitlist)
        self.last_waitlist_check = time.monotonic()
        return sent

    def maintain(self, channel: BlockingChannel) -> dict[str, int] | None:
        """Roll up and prune the metrics when maintenance_interval has passed (one step; tests
        call it directly). Returns the job's counts, or None when it was not time yet."""
        now = time.monotonic()
        if (
            self.last_maintenance is not None
            and now - self.last_maintenance < self.maintenance_interval
        ):
            return None
        counts: dict[str, int] = self.with_database(channel, metrics.rollup_and_prune)
        self.last_maintenance = time.monotonic()
        return counts


def _record_safely(method: Any, properties: Any, body: bytes) -> str:
    """A dead letter cannot be dead-lettered again: one that cannot even be recorded is logged
    (the error, never the body) and dropped. Transient database errors are retried."""
    try:
        return handle_dead_letter(
            body=body,
            headers=getattr(properties, "headers", None),
            routing_key=method.routing_key,
            message_id=getattr(properties, "message_id", None) or "",
        )
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - one message must never stop the worker
        log.exception("event=dead_letter_unrecorded error=%s", type(exc).__name__)
        return "unrecorded"


def _log_unavailable(exc: BaseException, retry_in: float) -> None:
    log.warning("event=consumer_unavailable error=%s retry_in=%.1fs", type(exc).__name__, retry_in)
