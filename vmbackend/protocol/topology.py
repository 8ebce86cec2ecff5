"""Exchanges and queues of docs/protocol.md, declared idempotently by whoever connects.

The arguments here are the contract: any other declarer (the shop) must use the same ones, or
RabbitMQ refuses the second declaration with PRECONDITION_FAILED.

The queues the control plane shares are quorum queues when the broker has them (RabbitMQ 3.8+),
so a three-node control broker keeps every command through the loss of one node. RabbitMQ refuses
to re-declare a queue with another `x-queue-type`, so the quorum queues have new names (`.q`);
`migrate_legacy` moves what is left in a classic queue of the old name into its successor, keeping
each message's routing key, and deletes the old queue once it is empty and unused (docs/fleet.md).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from vmbackend.protocol.messages import CREATE_VM, HOST_COMMANDS

log = logging.getLogger(__name__)

COMMANDS_EXCHANGE = "computing"
CREATE_QUEUE = "computing.create-vm.q"
DLX = "computing.dlx"
DEAD_QUEUE = "computing.dead.q"
EVENTS_EXCHANGE = "warren.events"
REJECT_HEADER = "x-warren-reject-reason"
MAX_REJECT_REASON = 500  # characters of the reason kept in the header
WORK_QUEUE_ARGS: dict[str, Any] = {"x-dead-letter-exchange": DLX}
# Quorum queues count redeliveries; past the limit a message is dead-lettered (RabbitMQ 4.0 sets
# 20 by default). The create-vm fallback requeues a request that does not fit the host that got
# it, and the shop requeues events it cannot store yet: neither may become a dead letter by
# counting, so the limit is set explicitly, the same on every broker version (an argument that
# changed with the version would make the next declaration PRECONDITION_FAILED).
DELIVERY_LIMIT = 1_000_000
QUORUM_SINCE = (3, 8)
LEGACY_SUFFIX = ".q"  # the quorum queues' names are the classic ones with this suffix
MIGRATE_EXCHANGE = "warren.migrate"
MIGRATED_TO_HEADER = "x-warren-migrated-to"


def host_queue(host_id: str) -> str:
    return f"computing.host.{host_id}{LEGACY_SUFFIX}"


def parse_version(raw: object) -> tuple[int, ...]:
    """(3, 10, 8) from b"3.10.8"; the leading numeric parts only; () from anything else."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    parts: list[int] = []
    for part in text.split("."):
        if not (part.isascii() and part.isdigit()):
            break
        parts.append(int(part))
    return tuple(parts)


def broker_version(channel: BlockingChannel) -> tuple[int, ...]:
    """The broker's version from the connection's server properties; () when it did not say."""
    properties = getattr(channel.connection._impl, "server_properties", None) or {}
    return parse_version(properties.get("version", b""))


def connection_user(channel: BlockingChannel) -> str:
    """The broker user the channel's connection logged in as: what a command or event carries
    as its `user_id` (the broker refuses a message whose user_id is another user)."""
    return credentials_user(channel.connection._impl.params)


def credentials_user(params: pika.connection.Parameters) -> str:
    """The user name of a connection's parameters ("" for EXTERNAL, certificate, logins)."""
    return str(getattr(params.credentials, "username", "") or "")


def queue_arguments(channel: BlockingChannel, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` plus the quorum arguments when this broker has quorum queues."""
    arguments = dict(base or {})
    if broker_version(channel)[:2] >= QUORUM_SINCE:
        arguments.update({"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT})
    return arguments


def _declare(
    channel: BlockingChannel,
    queue: str,
    bindings: list[tuple[str, str | None]],
    base: dict[str, Any] | None = None,
) -> None:
    channel.queue_declare(queue, durable=True, arguments=queue_arguments(channel, base))
    for exchange, key in bindings:
        channel.queue_bind(queue, exchange, routing_key=key)
    migrate_legacy(channel, queue, bindings)


def migrate_legacy(
    channel: BlockingChannel, queue: str, bindings: list[tuple[str, str | None]]
) -> int:
    """Move the messages of the classic queue `queue` once had (its name without `.q`) into it.

    The old queue is unbound first, so nothing new lands there; each message is republished
    (with publisher confirms, before its ack) through a private headers exchange where only the
    new queue is bound for its name, so it keeps its routing key and reaches no other queue; the
    old queue is deleted when empty and without consumers (an old daemon still consuming keeps it
    until the next connect). Runs on its own channels: the probe for a missing queue closes the
    channel it is on. Returns how many messages were moved.
    """
    legacy = queue.removesuffix(LEGACY_SUFFIX)
    if legacy == queue:
        return 0
    probe = channel.connection.channel()
    try:
        probe.queue_declare(legacy, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0  # nothing to migrate: the usual case
        raise
    probe.close()
    moved = 0
    mover = channel.connection.channel()
    route = {"x-match": "all", MIGRATED_TO_HEADER: queue}
    try:
        mover.confirm_delivery()
        for exchange, key in bindings:
            mover.queue_unbind(legacy, exchange, routing_key=key)  # None: the queue's name
        mover.exchange_declare(MIGRATE_EXCHANGE, exchange_type="headers", durable=True)
        mover.queue_bind(queue, MIGRATE_EXCHANGE, arguments=route)
        while True:
            method, properties, body = mover.basic_get(legacy)
            if method is None or properties is None or body is None:
                break
            properties.headers = {**(properties.headers or {}), MIGRATED_TO_HEADER: queue}
            mover.basic_publish(
                MIGRATE_EXCHANGE, method.routing_key, body, properties, mandatory=True
            )
            mover.basic_ack(method.delivery_tag)
            moved += 1
        mover.queue_unbind(queue, MIGRATE_EXCHANGE, arguments=route)
        mover.queue_delete(legacy, if_unused=True, if_empty=True)
        log.info("event=queue_migrated queue=%s from=%s moved=%d", queue, legacy, moved)
    except pika.exceptions.ChannelClosedByBroker as exc:
        # Left for the next connect: e.g. an old daemon still consumes from the old queue.
        log.warning("event=queue_migration_deferred queue=%s from=%s reason=%s", queue, legacy, exc)
    finally:
        if mover.is_open:
            mover.close()
    return moved


def host_key(host_id: str) -> str:
    return f"host.{host_id}"


def declare_common(channel: BlockingChannel) -> None:
    """Everything both sides share: exchanges, the create-vm work queue and the dead letters."""
    channel.exchange_declare(COMMANDS_EXCHANGE, exchange_type="direct", durable=True)
    channel.exchange_declare(DLX, exchange_type="fanout", durable=True)
    channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True)
    _declare(channel, DEAD_QUEUE, [(DLX, None)])  # fanout: the key is the name
    _declare(channel, CREATE_QUEUE, [(COMMANDS_EXCHANGE, CREATE_VM)], WORK_QUEUE_ARGS)


def ensure_common(channel: BlockingChannel, *, events_store: bool = False) -> bool:
    """Declare the shared topology (and the shop's event queue); True when declared.

    A host's or an operator's broker user has no configure right on what is shared
    (docs/security.md: configure would let it delete the queues): for it the broker refuses the
    declaration (403) and the names are checked passively instead, which needs no permission. A
    404 there (the shop never connected yet) propagates: the caller retries later. Runs on
    channels of its own, since a refusal closes the channel it happens on."""
    probe = channel.connection.channel()
    try:
        declare_common(probe)
        if events_store:
            declare_events_store(probe)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 403:
            raise
    finally:
        if probe.is_open:
            probe.close()
    check = channel.connection.channel()
    for exchange in (COMMANDS_EXCHANGE, DLX, EVENTS_EXCHANGE):
        check.exchange_declare(exchange, passive=True)
    for queue in (CREATE_QUEUE, DEAD_QUEUE, *((EVENTS_STORE_QUEUE,) if events_store else ())):
        check.queue_declare(queue, passive=True)
    check.close()
    return False


def declare_host(channel: BlockingChannel, host_id: str) -> str:
    """This host's own queue with the broadcast keys and its direct key; returns its name.
    The shared topology is declared too when this user may (a shared development user)."""
    ensure_common(channel, events_store=True)
    queue = host_queue(host_id)
    keys = (*HOST_COMMANDS, host_key(host_id))
    _declare(channel, queue, [(COMMANDS_EXCHANGE, key) for key in keys], WORK_QUEUE_ARGS)
    return queue


EVENTS_STORE_QUEUE = "warren.events.store.q"


def declare_events_store(channel: BlockingChannel) -> None:
    """The shop's event queue. The daemon declares it too, so events published before the shop
    ever connected are kept rather than dropped by an exchange with no queue."""
    _declare(channel, EVENTS_STORE_QUEUE, [(EVENTS_EXCHANGE, "#")])


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
