"""The event worker's loop (`manage.py consume_events`): host events in, acked after they applied.

`dispatch(body)` applies one event (orders/messaging/host_events.py) and says whether to
dead-letter it; `EventConsumer` acks a message only after that transaction committed, waits out a
database outage (never dead-lettering for it), reads the dead letters (orders/messaging/
dead_letters.py), and between messages marks silent hosts, evacuates, emails the waitlists and
rolls up metrics.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika.exceptions
from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
)
from django.utils import timezone
from pika.adapters.blocking_connection import BlockingChannel

from orders.fleet import evacuation, placement
from orders.fleet.hosts import mark_silent_hosts
from orders.fleet.waitlist import notify_waitlist
from orders.messaging import broker, host_events, senders
from orders.messaging.dead_letters import ROUTING_KEY_HEADER, handle_dead_letter
from orders.monitoring import metrics
from vmbackend.protocol import messages, topology
from vmbackend.protocol.backoff import Backoff, run_with_reconnect
from vmbackend.protocol.messages import MalformedEvent

log = logging.getLogger(__name__)

# Broker or database trouble: the consumer reconnects (the event stays on the queue).
CONSUMER_ERRORS = (pika.exceptions.AMQPError, OSError, DatabaseError)


REJECTED = "rejected"
# The database is down or restarting: the same event will apply later, so it is retried (with a
# backoff), never dead-lettered. Every other error means this message can never be applied.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)
MAX_ERROR_REASON = 300


def dispatch(body: bytes, user_id: str | None) -> tuple[str, str]:
    """Apply one event body sent by broker user `user_id` (the message's property, checked by
    the broker); returns (result, reason to dead-letter it or "").

    Never raises, except a transient database error (TRANSIENT_DB_ERRORS): a body the parser
    refuses, an event whose sender is not its host (orders/messaging/senders.py) or not the
    instance's, and an apply that fails for good (DataError, IntegrityError, ValueError,
    OverflowError, ...), all come back as ("rejected", reason)."""
    try:
        event = messages.parse_event(body)
        refusal = senders.sender_refusal(event, user_id)
        if refusal:
            raise host_events.RefusedEvent(refusal)
        return host_events.apply_event(event), ""
    except MalformedEvent as exc:
        log.warning("event=host_event_rejected reason=%r size=%s", exc.reason, len(body))
        return REJECTED, exc.reason
    except host_events.RefusedEvent as exc:
        log.warning("event=host_event_refused reason=%r size=%s", exc.reason, len(body))
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
        user_id = getattr(properties, "user_id", None)
        try:
            result, reason = self.with_database(channel, lambda: dispatch(body, user_id))
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
        """Read what is in computing.dead.q now (at most `limit`); each is recorded, then acked."""
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
