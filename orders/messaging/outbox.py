"""The outbox relay: publish unsent OutboxMessage rows to RabbitMQ with publisher confirms.

At least once: a row is marked sent only after the broker confirmed it; a crash between the
confirm and the mark publishes it again, which the daemons tolerate (vm-id is their idempotency
key). A broker outage leaves rows unsent; the relay backs off (capped) and tries again.

`publish_pending()` is one step; `Relay.run()` is the loop `manage.py relay_outbox` runs. Only one
relay runs at a time (orders/messaging/relay_lock.py): a second one waits for the lock and takes
over when the first one dies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pika.exceptions
from django.db import DatabaseError, close_old_connections
from django.db import connection as db_connection
from django.db.models import F
from django.utils import timezone
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from orders.core.provisioning import DELETE_VM, body_to_publish
from orders.fleet import placement
from orders.lib import wakeup
from orders.messaging import broker
from orders.messaging.relay_lock import RelayLock, relay_lock
from orders.models import OutboxMessage
from vmbackend.protocol import messages, topology
from vmbackend.protocol.backoff import Backoff, run_with_reconnect

log = logging.getLogger(__name__)

BATCH_SIZE = 100
SKIP_RESET_SECONDS = 60.0
# Broker trouble: connection lost, refused, or the channel closed on us. The row being published
# when it happened stays unsent with the error recorded.
BROKER_ERRORS = (pika.exceptions.AMQPError, OSError)


class RowNotAccepted(Exception):
    """The broker returned (unroutable) or nacked one row; the others can still go."""


def _record_attempt(row: OutboxMessage) -> None:
    """Before publishing: count the attempt, so a row that keeps failing is visible to staff."""
    now = timezone.now()
    OutboxMessage.objects.filter(pk=row.pk).update(attempts=F("attempts") + 1, last_attempt_at=now)


def _record_failure(row: OutboxMessage, error: str) -> None:
    OutboxMessage.objects.filter(pk=row.pk).update(last_error=error[:2000])


def _mark_sent(row: OutboxMessage, *, keep_error: bool = False) -> None:
    fields = (
        {"sent_at": timezone.now()} if keep_error else {"sent_at": timezone.now(), "last_error": ""}
    )
    OutboxMessage.objects.filter(pk=row.pk, sent_at__isnull=True).update(**fields)


def publish_row(channel: BlockingChannel, row: OutboxMessage) -> None:
    """Publish one row and wait for the broker's confirm (the channel is in confirm mode)."""
    _record_attempt(row)
    routing_key = placement.route(row)  # a fresh create-vm: to the host it is placed on
    body = messages.encode(body_to_publish(row))  # a create-vm's password is filled in here
    try:
        channel.basic_publish(
            exchange=row.exchange,
            routing_key=routing_key,
            body=body,
            properties=broker.json_properties(
                str(row.message_id), user_id=topology.connection_user(channel)
            ),
            mandatory=True,
        )
    except pika.exceptions.UnroutableError as exc:
        if placement.unplace_unroutable(row):  # the placed host's queue is gone: elsewhere
            publish_row(channel, row)
            return
        if row.body.get("command") == DELETE_VM:
            # No host queue exists (for a delete-vm to one host: that host's queue is gone), so
            # no host can have this VM. Should a host take the create-vm later, its
            # instance.accepted makes the event consumer send delete-vm again.
            _record_failure(row, "unroutable: no host queue exists, nothing to delete")
            _mark_sent(row, keep_error=True)
            return
        _record_failure(row, "unroutable: no queue is bound for this routing key")
        raise RowNotAccepted("unroutable") from exc
    except pika.exceptions.NackError as exc:
        _record_failure(row, "nacked by the broker")
        raise RowNotAccepted("nacked") from exc
    except BROKER_ERRORS as exc:
        _record_failure(row, f"{type(exc).__name__}: {exc}")
        raise
    _mark_sent(row)


def publish_pending(
    channel: BlockingChannel, *, limit: int = BATCH_SIZE, skip: set | None = None
) -> int:
    """Publish up to `limit` unsent rows, oldest first. Returns how many were confirmed.

    A row the broker does not accept (unroutable, nacked) is added to `skip`, so the loop does
    not hammer it; the relay clears `skip` every minute and on reconnect.

    Raises a broker error (pika AMQPError / OSError) when the connection goes; the rows not yet
    confirmed stay unsent. Call it from one relay only (Relay.run holds the relay lock): two
    relays would publish every row twice.
    """
    pending = OutboxMessage.objects.filter(sent_at__isnull=True).order_by("created_at", "id")
    if skip:
        pending = pending.exclude(pk__in=skip)
    sent = 0
    for row in list(pending[:limit]):
        try:
            publish_row(channel, row)
        except RowNotAccepted as exc:
            if skip is not None:
                skip.add(row.pk)
            log.error(
                "event=outbox_not_accepted message_id=%s routing_key=%s instance_pk=%s reason=%s",
                row.message_id,
                row.routing_key,
                row.instance_id or "-",
                exc,
            )
            continue
        sent += 1
        log.info(
            "event=outbox_sent message_id=%s routing_key=%s vm_id=%s",
            row.message_id,
            row.routing_key,
            (row.body.get("options") or {}).get("vm-id", "-"),
        )
    return sent


def open_channel(url: str | None = None) -> tuple[BlockingConnection, BlockingChannel]:
    connection = broker.connect(url)
    channel = connection.channel()
    channel.confirm_delivery()
    broker.declare_topology(channel)
    return connection, channel


class LockLost(Exception):
    """The relay lock's database session went away: another relay may hold the lock now."""


@dataclass
class Relay:
    """The relay loop: take the relay lock, connect, publish what is pending, poll, back off when
    the broker is gone."""

    url: str | None = None
    poll_interval: float = 0.5
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    lock_poll: float = 1.0
    lock_check_interval: float = 5.0
    stop_event: threading.Event = field(default_factory=threading.Event)
    total: int = 0
    wakeups: int = 0  # waits ended by a commit's wake-up (orders/lib/wakeup.py), not the poll
    lock: RelayLock | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def run(self, *, once: bool = False) -> int:
        """Run until stopped (or, with once, until one pass published what was pending).

        Waits for the relay lock first. Reconnects with a capped backoff; with once, a broker or
        database error propagates."""
        self.total = 0
        lock = self.lock = self.lock or relay_lock()
        try:
            while self.wait_for_lock(lock):
                try:
                    run_with_reconnect(
                        lambda connected: self.serve(connected, once=once),
                        stop=self.stop_event,
                        errors=(*BROKER_ERRORS, DatabaseError),
                        on_error=_log_unavailable,
                        backoff=Backoff(self.backoff_initial, self.backoff_max),
                        reraise=once,
                    )
                    break
                except LockLost:
                    log.error("event=relay_lock_lost")
        finally:
            lock.release()
        return self.total

    def wait_for_lock(self, lock: RelayLock) -> bool:
        """Poll until this process holds the lock; False when stopped first."""
        waiting = False
        while not self.stop_event.is_set():
            if lock.try_acquire():
                log.info("event=relay_lock_acquired")
                return True
            if not waiting:
                log.info("event=relay_waiting_for_lock")
                waiting = True
            self.stop_event.wait(self.lock_poll)
        return False

    def _wait_for_wakeup(self, listener: wakeup.Listener, connection: BlockingConnection) -> None:
        """Until a wake-up, the poll interval, or stop; pika's heartbeats served in between."""
        deadline = time.monotonic() + self.poll_interval
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            woken = listener.wait(min(left, WAIT_SLICE))
            connection.process_data_events(time_limit=0)
            if woken:
                self.wakeups += 1
                return

    def serve(self, connected: Callable[[], None], *, once: bool = False) -> bool:
        """One broker session: publish and poll until stopped. Returns True when `once` is done."""
        connection, channel = open_channel(self.url)
        listener = _listen()  # before the first look at the table: no row can slip between
        try:
            log.info("event=relay_connected wakeup=%s", "on" if listener else "off")
            connected()
            skipped: set[int] = set()  # cleared on reconnect: a new session
            skip_since = lock_checked = time.monotonic()
            while not self.stop_event.is_set():
                if not db_connection.in_atomic_block:  # tests run the loop inside one
                    close_old_connections()
                now = time.monotonic()
                if now - skip_since > SKIP_RESET_SECONDS:
                    skipped.clear()
                    skip_since = now
                if now - lock_checked > self.lock_check_interval and self.lock is not None:
                    if not self.lock.still_held():
                        raise LockLost
                    lock_checked = now
                sent = publish_pending(channel, skip=skipped)
                self.total += sent
                if sent < BATCH_SIZE:
                    if once:
                        return True
                    if listener is None:  # keep heartbeats flowing while idle
                        connection.process_data_events(time_limit=self.poll_interval)
                    else:  # a commit's wake-up ends the wait at once; the poll is the backstop
                        self._wait_for_wakeup(listener, connection)
        finally:
            if listener is not None:
                listener.close()
            broker.close_quietly(connection)
        return False


WAIT_SLICE = 0.5  # the longest wait on the wake-up between heartbeats and stop checks


def _listen() -> wakeup.Listener | None:
    """The relay's wake-up on commit (orders/lib/wakeup.py); None (poll only) when it cannot be
    had."""
    try:
        return wakeup.Listener(wakeup.OUTBOX)
    except Exception as exc:  # noqa: BLE001 - the poll alone still publishes every row
        log.warning("event=relay_wakeup_unavailable error=%s", exc)
        return None


def _log_unavailable(exc: BaseException, retry_in: float) -> None:
    log.warning("event=relay_unavailable error=%s retry_in=%.1fs", type(exc).__name__, retry_in)


def superseded(message: OutboxMessage) -> bool:
    """A create-vm for a vm-id its instance no longer has (a retry replaced it): sending it
    again would boot a VM nobody owns, with the customer's current password (issue 20)."""
    body = message.body or {}
    if body.get("command") != messages.CREATE_VM or message.instance is None:
        return False
    return str((body.get("options") or {}).get("vm-id")) != message.instance.vm_id


def requeue(*, message: OutboxMessage) -> bool:
    """Staff action: publish a row again (same message_id; consumers de-duplicate).

    Conditional UPDATE: a row that is unsent already (the relay may be publishing it right now)
    is left alone, and so is a superseded create-vm. Returns True when the row was queued again.
    """
    rows = OutboxMessage.objects.filter(pk=message.pk, sent_at__isnull=False)
    if superseded(message):
        # Race: a staff retry may give the instance a new vm-id while this runs; the condition
        # is in the one UPDATE, so a retry committed first makes it match nothing.
        rows = rows.filter(instance__public_id=message.body["options"]["vm-id"])
    queued = rows.update(sent_at=None, last_error="")
    if queued:
        log.info(
            "event=outbox_requeued message_id=%s routing_key=%s",
            message.message_id,
            message.routing_key,
        )
    return bool(queued)
