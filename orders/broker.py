"""The shop's side of the control broker (docs/protocol.md): topology and connections.

Every AMQP connection the shop opens comes from `connect()` (timeouts, heartbeats), and every
queue or exchange it declares is declared in `declare_topology()`, with arguments identical to the
host daemon's (vmbackend/topology.py): RabbitMQ refuses a second declaration with different
arguments (PRECONDITION_FAILED), and tests/orders/test_broker.py declares both to prove they agree.
"""

from __future__ import annotations

import pika
from django.conf import settings
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

COMMANDS_EXCHANGE = "computing"
CREATE_VM_QUEUE = "computing.create-vm"
DLX = "computing.dlx"
DEAD_QUEUE = "computing.dead"
EVENTS_EXCHANGE = "warren.events"
STORE_EVENTS_QUEUE = "warren.events.store"
REJECT_HEADER = "x-warren-reject-reason"
WORK_QUEUE_ARGUMENTS = {"x-dead-letter-exchange": DLX}

CONNECT_TIMEOUT = 5.0
HEARTBEAT = 30


def connection_parameters(url: str | None = None) -> pika.URLParameters:
    params = pika.URLParameters(url or settings.AMQP_URL)
    params.socket_timeout = CONNECT_TIMEOUT
    params.blocked_connection_timeout = 30
    params.stack_timeout = CONNECT_TIMEOUT * 2
    params.heartbeat = HEARTBEAT
    params.connection_attempts = 1
    params.client_properties = {"connection_name": "warren-shop"}
    return params


def connect(url: str | None = None) -> BlockingConnection:
    """A blocking connection with timeouts. Raises pika.exceptions.AMQPError when unreachable."""
    return pika.BlockingConnection(connection_parameters(url))


def declare_topology(channel: BlockingChannel) -> None:
    """Everything the shop publishes to or consumes from, declared idempotently."""
    channel.exchange_declare(COMMANDS_EXCHANGE, exchange_type="direct", durable=True)
    channel.exchange_declare(DLX, exchange_type="fanout", durable=True)
    channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare(DEAD_QUEUE, durable=True)
    channel.queue_bind(DEAD_QUEUE, DLX)
    # create-vm must survive until a host has room, even if no host is running yet.
    channel.queue_declare(CREATE_VM_QUEUE, durable=True, arguments=WORK_QUEUE_ARGUMENTS)
    channel.queue_bind(CREATE_VM_QUEUE, COMMANDS_EXCHANGE, routing_key="create-vm")
    channel.queue_declare(STORE_EVENTS_QUEUE, durable=True)
    channel.queue_bind(STORE_EVENTS_QUEUE, EVENTS_EXCHANGE, routing_key="#")


def json_properties(message_id: str, headers: dict | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message_id,
        headers=headers,
    )
