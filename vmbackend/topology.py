"""Exchanges and queues of docs/protocol.md, declared idempotently by whoever connects.

The arguments here are the contract: any other declarer (the shop) must use the same ones, or
RabbitMQ refuses the second declaration with PRECONDITION_FAILED.
"""

from __future__ import annotations

import uuid
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from vmbackend.messages import CREATE_VM, HOST_COMMANDS

COMMANDS_EXCHANGE = "computing"
CREATE_QUEUE = "computing.create-vm"
DLX = "computing.dlx"
DEAD_QUEUE = "computing.dead"
EVENTS_EXCHANGE = "warren.events"
REJECT_HEADER = "x-warren-reject-reason"
MAX_REJECT_REASON = 500  # characters of the reason kept in the header
WORK_QUEUE_ARGS: dict[str, Any] = {"x-dead-letter-exchange": DLX}


def host_queue(host_id: str) -> str:
    return f"computing.host.{host_id}"


def host_key(host_id: str) -> str:
    return f"host.{host_id}"


def declare_common(channel: BlockingChannel) -> None:
    """Everything both sides share: exchanges, the create-vm work queue and the dead letters."""
    channel.exchange_declare(COMMANDS_EXCHANGE, exchange_type="direct", durable=True)
    channel.exchange_declare(DLX, exchange_type="fanout", durable=True)
    channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare(DEAD_QUEUE, durable=True)
    channel.queue_bind(DEAD_QUEUE, DLX)
    channel.queue_declare(CREATE_QUEUE, durable=True, arguments=WORK_QUEUE_ARGS)
    channel.queue_bind(CREATE_QUEUE, COMMANDS_EXCHANGE, routing_key=CREATE_VM)


def declare_host(channel: BlockingChannel, host_id: str) -> str:
    """This host's own queue with the broadcast keys and its direct key; returns its name."""
    declare_common(channel)
    queue = host_queue(host_id)
    channel.queue_declare(queue, durable=True, arguments=WORK_QUEUE_ARGS)
    for key in (*HOST_COMMANDS, host_key(host_id)):
        channel.queue_bind(queue, COMMANDS_EXCHANGE, routing_key=key)
    return queue


EVENTS_STORE_QUEUE = "warren.events.store"


def declare_events_store(channel: BlockingChannel) -> None:
    """The shop's event queue. The daemon declares it too, so events published before the shop
    ever connected are kept rather than dropped by an exchange with no queue."""
    channel.queue_declare(EVENTS_STORE_QUEUE, durable=True)
    channel.queue_bind(EVENTS_STORE_QUEUE, EVENTS_EXCHANGE, routing_key="#")


def publish_dead_letter(
    channel: BlockingChannel,
    routing_key: str,
    body: bytes,
    properties: Any,
    reason: str,
    extra_headers: dict[str, Any] | None = None,
) -> None:
    """Publish a message that cannot be served to computing.dlx, unchanged, with the reason.

    Used for rejected commands (the daemon) and rejected events (the shop). The message keeps its
    own headers, message_id and correlation_id; `extra_headers` say where it was rejected.
    """
    headers = dict(getattr(properties, "headers", None) or {})
    headers.update(extra_headers or {})
    headers[REJECT_HEADER] = reason[:MAX_REJECT_REASON]
    channel.basic_publish(
        exchange=DLX,
        routing_key=routing_key,
        body=body,
        properties=pika.BasicProperties(
            content_type=getattr(properties, "content_type", None) or "application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=headers,
            message_id=getattr(properties, "message_id", None) or str(uuid.uuid4()),
            correlation_id=getattr(properties, "correlation_id", None),
        ),
    )
