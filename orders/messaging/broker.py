"""The shop's side of the control broker (docs/protocol.md): topology and connections.

Every AMQP connection the shop opens comes from `connect()` (timeouts, heartbeats). The names
and arguments of exchanges and queues are the contract's, defined once in vmbackend/topology.py
(plain Python, no Django) and used by both sides directly (no aliases here): RabbitMQ refuses a second declaration with
different arguments (PRECONDITION_FAILED), so there must be only one definition.
"""

from __future__ import annotations

import pika
import pika.exceptions
from django.conf import settings
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from vmbackend.protocol import broker_tls, topology

CONNECT_TIMEOUT = 5.0
HEARTBEAT = 30


def connection_parameters(url: str | None = None) -> pika.URLParameters:
    params = broker_tls.with_tls(pika.URLParameters(url or settings.AMQP_URL), settings.BROKER_CA)
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


def close_quietly(connection: BlockingConnection | None) -> None:
    """Close a connection that may already be broken (the error that broke it was logged)."""
    if connection is not None and connection.is_open:
        try:
            connection.close()
        except (pika.exceptions.AMQPError, OSError):
            pass


def declare_topology(channel: BlockingChannel) -> None:
    """Everything the shop publishes to or consumes from, declared idempotently."""
    topology.declare_common(channel)
    topology.declare_events_store(channel)


def json_properties(
    message_id: str, headers: dict | None = None, *, user_id: str | None = None
) -> pika.BasicProperties:
    """A command's properties. `user_id` (the connection's user) is what hosts check before
    obeying a command (WARREN_COMMAND_SENDERS, docs/security.md)."""
    return pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message_id,
        headers=headers,
        user_id=user_id,
    )
