"""The daemon's AMQP side: one pika BlockingConnection owned by the main thread.

It consumes the host queue and (while a slot is free) the shared create-vm queue, answers,
acks, dead-letters, publishes the events of the outbox with publisher confirms and the
host.heartbeat. Workers never call a channel: they hand callbacks to `from_worker`, which runs
them on the connection's thread (`add_callback_threadsafe`, as in pika's threaded consumer
example).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from vmbackend.host.config import Config
from vmbackend.host.registry import Registry
from vmbackend.protocol import broker_tls, messages, topology

log = logging.getLogger(__name__)

DAEMON_VERSION = "0.1.0"
HOST_PREFETCH = 16

CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.ChannelClosed,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
    pika.exceptions.NackError,
    OSError,
)


def connection_lost(exc: BaseException, delivery: Delivery) -> bool:
    """Whether `exc` is the broker connection failing (reconnect; the broker redelivers) rather
    than one message failing (dead-letter it). A plain OSError counts only when the channel is
    gone with it: a full disk while connected must not loop the message through redelivery."""
    if isinstance(exc, pika.exceptions.AMQPError):
        return True
    return isinstance(exc, OSError) and not delivery.channel.is_open


@dataclass
class Delivery:
    """One consumed message and whether it was settled (acked, nacked or dead-lettered)."""

    channel: BlockingChannel
    method: Basic.Deliver
    props: BasicProperties
    body: bytes
    settled: bool = False

    @property
    def routing_key(self) -> str:
        return str(self.method.routing_key)


Handler = Callable[[Delivery], None]


class AmqpIO:
    def __init__(self, cfg: Config, registry: Registry):
        self.cfg = cfg
        self.registry = registry
        self.connection: pika.BlockingConnection | None = None
        self.host_channel: BlockingChannel | None = None
        self.create_channel: BlockingChannel | None = None
        self.event_channel: BlockingChannel | None = None
        self.create_tag: str | None = None
        self.heartbeat_seq = 0
        # instance.metrics bodies from the sampler thread, waiting for the connection's thread:
        # bounded (the oldest go first) and dropped once older than an interval (best-effort).
        self.metrics_channel: BlockingChannel | None = None
        self.metrics_out: deque[tuple[float, dict[str, Any]]] = deque(
            maxlen=max(2 * cfg.capacity, 16)
        )
        self.metrics_dropped = 0
        self.user = ""

    # -- connection
    def connect(self, on_host: Handler) -> None:
        params = broker_tls.with_tls(pika.URLParameters(self.cfg.amqp_url), self.cfg.broker_ca)
        params.socket_timeout = 10
        params.blocked_connection_timeout = 60
        params.connection_attempts = 1
        params.client_properties = {"connection_name": f"vmbackend {self.cfg.host_id}"}
        # Every event carries the connection's user as user_id: the broker refuses any other
        # value, so the shop knows which host's user sent it (docs/security.md).
        self.user = topology.credentials_user(params)
        self.connection = pika.BlockingConnection(params)
        self.event_channel = self.connection.channel()
        self.event_channel.confirm_delivery()
        topology.declare_host(self.event_channel, self.cfg.host_id)
        self.host_channel = self.connection.channel()
        self.host_channel.basic_qos(prefetch_count=HOST_PREFETCH)
        self.host_channel.basic_consume(topology.host_queue(self.cfg.host_id), _adapter(on_host))
        self.create_channel = self.connection.channel()
        self.create_channel.basic_qos(prefetch_count=1)
        self.create_tag = None
        self.metrics_channel = self.connection.channel()  # no confirms: samples are best-effort
        log.info(
            "connected host_id=%s url=%s capacity=%s",
            self.cfg.host_id,
            self.cfg.redacted_amqp_url(),
            self.cfg.capacity,
        )

    def close(self) -> None:
        conn, self.connection = self.connection, None
        self.host_channel = self.create_channel = self.event_channel = None
        self.metrics_channel = None
        self.create_tag = None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except CONNECTION_ERRORS:
                pass

    def process(self, time_limit: float) -> bool:
        """Run I/O and callbacks for up to `time_limit` seconds; False when not connected."""
        if self.connection is None:
            return False
        self.connection.process_data_events(time_limit=time_limit)
        return True

    def from_worker(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the connection's thread (no-op while disconnected)."""
        conn = self.connection
        if threading.current_thread() is threading.main_thread():
            if conn is not None and conn.is_open:
                callback()
            return
        if conn is None or not conn.is_open:
            return
        try:
            conn.add_callback_threadsafe(callback)
        except (pika.exceptions.ConnectionWrongStateError, RuntimeError, AttributeError):
            pass  # disconnected meanwhile: the next connection flushes and redelivers

    # -- consuming create-vm
    def set_consuming_create(self, want: bool, on_create: Handler) -> None:
        """Consume create-vm only while `want` (a full host takes nothing)."""
        channel = self.create_channel
        if channel is None or not channel.is_open:
            return
        if want and self.create_tag is None:
            self.create_tag = channel.basic_consume(topology.CREATE_QUEUE, _adapter(on_create))
            log.info(
                "consuming create-vm host_id=%s free_slots=%s",
                self.cfg.host_id,
                self.registry.free_slots(),
            )
        elif not want and self.create_tag is not None:
            tag, self.create_tag = self.create_tag, None
            channel.basic_cancel(tag)
            log.info(
                "paused create-vm host_id=%s free_slots=%s",
                self.cfg.host_id,
                self.registry.free_slots(),
            )

    def cancel_create(self) -> None:
        if self.create_channel is not None and self.create_tag is not None:
            self.create_channel.basic_cancel(self.create_tag)

    # -- one delivery
    def reply(self, delivery: Delivery, body: bytes) -> None:
        props = delivery.props
        if not props.reply_to:
            return
        delivery.channel.basic_publish(
            "",
            props.reply_to,
            body,
            pika.BasicProperties(
                content_type="application/json", correlation_id=props.correlation_id
            ),
        )

    def ack(self, delivery: Delivery) -> None:
        delivery.channel.basic_ack(delivery.method.delivery_tag)
        delivery.settled = True

    def requeue(self, delivery: Delivery) -> None:
        delivery.channel.basic_nack(delivery.method.delivery_tag, requeue=True)
        delivery.settled = True

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Send the message to the dead-letter exchange with the reason, answer, ack."""
        log.warning(
            "command rejected host_id=%s routing_key=%s reason=%s",
            self.cfg.host_id,
            delivery.routing_key,
            reason,
        )
        topology.publish_dead_letter(
            self.event_channel or delivery.channel,
            delivery.routing_key,
            delivery.body,
            delivery.props,
            reason,
            {"x-warren-host-id": self.cfg.host_id, "x-warren-routing-key": delivery.routing_key},
        )
        self.reply(delivery, messages.error(reason))
        self.ack(delivery)

    # -- events
    def flush_events(self) -> None:
        """Publish every queued event in order, dropping each from the outbox once confirmed."""
        channel = self.event_channel
        if channel is None or not channel.is_open:
            return
        for vm_id, events in self.registry.pending_events():
            for body in events:
                channel.basic_publish(
                    topology.EVENTS_EXCHANGE,
                    body["type"],
                    messages.encode_event(body),
                    pika.BasicProperties(
                        content_type="application/json",
                        delivery_mode=2,
                        message_id=body["message_id"],
                        user_id=self.user,
                    ),
                )
                if not self.registry.confirmed(vm_id, body["message_id"]):
                    break

    def publish_confirmed(self, body: dict[str, Any]) -> None:
        """Publish one event outside any VM's outbox and wait for the broker's confirm (an
        instance.declined: the create-vm it answers is acked only afterwards, so a lost
        connection redelivers the create-vm rather than losing the answer)."""
        channel = self.event_channel
        if channel is None or not channel.is_open:
            raise pika.exceptions.ChannelWrongStateError("not connected")
        channel.basic_publish(
            topology.EVENTS_EXCHANGE,
            body["type"],
            messages.encode_event(body),
            pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                message_id=body["message_id"],
                user_id=self.user,
            ),
        )

    def publish_heartbeat(self) -> None:
        channel = self.event_channel
        if channel is None or not channel.is_open:
            return
        self.heartbeat_seq += 1
        body = messages.event(
            "host.heartbeat",
            instance_id=None,
            host_id=self.cfg.host_id,
            seq=self.heartbeat_seq,
            capacity=self.cfg.capacity,
            running=self.registry.running(),
            free_slots=max(0, self.registry.free_slots()),
            daemon_version=DAEMON_VERSION,
            **self.registry.resources().heartbeat_fields(),
            **({"pool": self.registry.pool_census()} if self.cfg.pool else {}),
        )
        channel.basic_publish(
            topology.EVENTS_EXCHANGE,
            "host.heartbeat",
            messages.encode_event(body),
            pika.BasicProperties(
                content_type="application/json", message_id=body["message_id"], user_id=self.user
            ),
        )

    # -- metrics (best-effort: no outbox, no confirms, transient)
    def offer_metrics(self, body: dict[str, Any]) -> None:
        """Queue one sample for the connection's thread (any thread may call this)."""
        if len(self.metrics_out) == self.metrics_out.maxlen:
            self.metrics_dropped += 1
        self.metrics_out.append((time.monotonic(), body))

    def flush_metrics(self, max_age: float) -> int:
        """Publish the queued samples no older than `max_age` seconds, drop the others;
        the number published. Called on the connection's thread."""
        channel = self.metrics_channel
        if channel is None or not channel.is_open:
            return 0
        published, oldest = 0, time.monotonic() - max_age
        while self.metrics_out:
            queued_at, body = self.metrics_out.popleft()
            if queued_at < oldest:
                self.metrics_dropped += 1
                continue
            channel.basic_publish(
                topology.EVENTS_EXCHANGE,
                body["type"],
                messages.encode_event(body),
                pika.BasicProperties(
                    content_type="application/json",
                    message_id=body["message_id"],
                    user_id=self.user,
                ),
            )
            published += 1
        if self.metrics_dropped:
            log.warning(
                "metrics dropped host_id=%s count=%s (the broker was unreachable)",
                self.cfg.host_id,
                self.metrics_dropped,
            )
            self.metrics_dropped = 0
        return published


def _adapter(
    handler: Handler,
) -> Callable[[BlockingChannel, Basic.Deliver, BasicProperties, bytes], None]:
    def on_message(
        channel: BlockingChannel, method: Basic.Deliver, props: BasicProperties, body: bytes
    ) -> None:
        handler(Delivery(channel, method, props, body))

    return on_message
