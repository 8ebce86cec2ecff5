"""The shared queues are quorum queues on a 3.8+ broker, and the classic queues of the old names
are migrated into them without losing a message (real local RabbitMQ, a vhost per test)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.messaging import broker
from tests.conftest import BROKER, _rabbitmqctl
from vmbackend.protocol import topology
from vmbackend.protocol.messages import CREATE_VM, HOST_COMMANDS

pytestmark = pytest.mark.broker


@pytest.fixture
def vhost() -> Iterator[str]:
    name = f"warren-test-quorum-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    _rabbitmqctl("delete_vhost", name)


def _connect(vhost: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.URLParameters(f"amqp://guest:guest@{BROKER}/{quote(vhost, safe='')}")
    )


def _queues(vhost: str) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_queues",
            "-p",
            vhost,
            "name",
            "type",
            "arguments",
            "messages",
            "--formatter",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {q["name"]: q for q in json.loads(out)}


def _get_all(channel, queue: str) -> list[tuple[str, bytes, str | None]]:
    got = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((method.routing_key, body, properties.message_id))


def _publish(channel, exchange: str, key: str, body: bytes) -> None:
    channel.basic_publish(
        exchange, key, body, pika.BasicProperties(delivery_mode=2, message_id=body.decode())
    )


@given(st.one_of(st.binary(), st.text()))
def test_the_version_parser_never_fails(raw):
    assert all(isinstance(part, int) for part in topology.parse_version(raw))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"3.10.8", (3, 10, 8)), ("3.7.28", (3, 7, 28)), (b"4.0.0-beta.1", (4, 0)), (b"", ())],
)
def test_the_version_parser_reads_the_leading_numbers(raw, expected):
    assert topology.parse_version(raw) == expected


def test_both_sides_declare_quorum_queues_with_a_high_delivery_limit(vhost):
    connection = _connect(vhost)
    try:
        channel = connection.channel()
        assert topology.broker_version(channel)[:2] >= topology.QUORUM_SINCE
        topology.declare_host(channel, "h1")
        topology.declare_events_store(channel)
        broker.declare_topology(channel)  # the shop, second: same arguments or the channel closes
        assert channel.is_open
    finally:
        connection.close()
    queues = _queues(vhost)
    shared = [topology.CREATE_QUEUE, topology.DEAD_QUEUE, topology.EVENTS_STORE_QUEUE]
    for name in [*shared, topology.host_queue("h1")]:
        assert queues[name]["type"] == "quorum", name
        arguments = {key: value for key, _, value in queues[name]["arguments"]}
        assert arguments["x-delivery-limit"] == topology.DELIVERY_LIMIT


def _get_one(connection, channel, queue: str):
    """basic_get until a message is there: a quorum queue's enqueue or requeue goes through its
    log, so it may not be visible in the same instant (waits up to 10 s, then gives up)."""
    for _ in range(200):
        method, properties, body = channel.basic_get(queue)
        if method is not None:
            return method, properties, body
        connection.sleep(0.05)
    raise AssertionError(f"nothing in {queue}")


def test_a_requeued_create_vm_is_not_dead_lettered_by_counting(vhost):
    """The fallback puts back a request that does not fit; 30 times is past 4.0's default 20."""
    connection = _connect(vhost)
    try:
        channel = connection.channel()
        topology.declare_common(channel)
        channel.confirm_delivery()
        _publish(channel, topology.COMMANDS_EXCHANGE, CREATE_VM, b"create-1")
        for _ in range(30):
            method, _, body = _get_one(connection, channel, topology.CREATE_QUEUE)
            assert body == b"create-1"
            channel.basic_nack(method.delivery_tag, requeue=True)
        method, properties, body = _get_one(connection, channel, topology.CREATE_QUEUE)
        assert (body, properties.headers["x-delivery-count"]) == (b"create-1", 30)
        channel.basic_ack(method.delivery_tag)
        assert _get_all(channel, topology.DEAD_QUEUE) == []
    finally:
        connection.close()


def test_messages_survive_a_dropped_connection(vhost):
    connection = _connect(vhost)
    channel = connection.channel()
    topology.declare_host(channel, "h1")
    channel.confirm_delivery()
    _publish(channel, topology.COMMANDS_EXCHANGE, topology.host_key("h1"), b"direct-1")
    _rabbitmqctl("close_all_connections", "-p", vhost, "test drop")
    with pytest.raises(pika.exceptions.AMQPError):
        connection.process_data_events(time_limit=5)
        channel.basic_get(topology.host_queue("h1"))
    again = _connect(vhost)
    try:
        channel = again.channel()
        topology.declare_host(channel, "h1")
        got = _get_all(channel, topology.host_queue("h1"))
        assert got == [(topology.host_key("h1"), b"direct-1", "direct-1")]
    finally:
        again.close()


def _declare_old_topology(channel, host_ids: list[str]) -> None:
    """The classic queues as the version before quorum queues declared them."""
    channel.exchange_declare(topology.COMMANDS_EXCHANGE, exchange_type="direct", durable=True)
    channel.exchange_declare(topology.DLX, exchange_type="fanout", durable=True)
    channel.exchange_declare(topology.EVENTS_EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare("computing.dead", durable=True)
    channel.queue_bind("computing.dead", topology.DLX)
    channel.queue_declare("computing.create-vm", durable=True, arguments=topology.WORK_QUEUE_ARGS)
    channel.queue_bind("computing.create-vm", topology.COMMANDS_EXCHANGE, routing_key=CREATE_VM)
    channel.queue_declare("warren.events.store", durable=True)
    channel.queue_bind("warren.events.store", topology.EVENTS_EXCHANGE, routing_key="#")
    for host_id in host_ids:
        old = f"computing.host.{host_id}"
        channel.queue_declare(old, durable=True, arguments=topology.WORK_QUEUE_ARGS)
        for key in (*HOST_COMMANDS, topology.host_key(host_id)):
            channel.queue_bind(old, topology.COMMANDS_EXCHANGE, routing_key=key)


def test_the_classic_queues_of_the_old_names_are_migrated_without_loss(vhost):
    broadcast = HOST_COMMANDS[0]
    connection = _connect(vhost)
    try:
        channel = connection.channel()
        _declare_old_topology(channel, ["a", "b"])
        channel.confirm_delivery()
        _publish(channel, topology.COMMANDS_EXCHANGE, CREATE_VM, b"create-1")
        _publish(channel, topology.COMMANDS_EXCHANGE, broadcast, b"broadcast-1")
        _publish(channel, topology.COMMANDS_EXCHANGE, topology.host_key("a"), b"direct-a")
        _publish(channel, topology.EVENTS_EXCHANGE, "host.a.vm-state", b"event-1")
        _publish(channel, topology.DLX, "create-vm", b"dead-1")

        # The new daemon of host a, then the shop, connect; host b's daemon is not upgraded yet.
        topology.declare_host(channel, "a")
        topology.declare_events_store(channel)
        broker.declare_topology(channel)
        assert channel.is_open
        # Published after the switch: lands in the new queues only.
        _publish(channel, topology.COMMANDS_EXCHANGE, CREATE_VM, b"create-2")

        queues = _queues(vhost)
        for old in (
            "computing.create-vm",
            "computing.dead",
            "warren.events.store",
            "computing.host.a",
        ):
            assert old not in queues
        assert queues["computing.host.b"]["messages"] == 1  # untouched until b upgrades
        assert _get_all(channel, topology.CREATE_QUEUE) == [
            (CREATE_VM, b"create-1", "create-1"),
            (CREATE_VM, b"create-2", "create-2"),
        ]
        assert _get_all(channel, topology.host_queue("a")) == [
            (broadcast, b"broadcast-1", "broadcast-1"),
            (topology.host_key("a"), b"direct-a", "direct-a"),
        ]
        assert _get_all(channel, topology.EVENTS_STORE_QUEUE) == [
            ("host.a.vm-state", b"event-1", "event-1")
        ]
        assert _get_all(channel, topology.DEAD_QUEUE) == [("create-vm", b"dead-1", "dead-1")]

        topology.declare_host(channel, "b")
        # b's messages went to b only: a broadcast is not copied into another host's queue.
        assert _get_all(channel, topology.host_queue("a")) == []
        assert _get_all(channel, topology.host_queue("b")) == [
            (broadcast, b"broadcast-1", "broadcast-1")
        ]
        assert "computing.host.b" not in _queues(vhost)
    finally:
        connection.close()


def test_an_old_queue_still_consumed_is_kept_until_its_messages_come_back(vhost):
    """An old daemon still consuming holds its unacked messages: the migration moves what it can,
    keeps the old queue, and the next connect after that daemon stops moves the rest."""
    connection = _connect(vhost)
    old_daemon = _connect(vhost)
    try:
        channel = connection.channel()
        _declare_old_topology(channel, ["b"])
        channel.confirm_delivery()
        _publish(channel, topology.COMMANDS_EXCHANGE, topology.host_key("b"), b"held")
        held = old_daemon.channel()
        held.basic_consume("computing.host.b", lambda *args: None)
        old_daemon.process_data_events(time_limit=1)  # the message is now delivered, unacked

        topology.declare_host(channel, "b")
        assert channel.is_open
        assert "computing.host.b" in _queues(vhost)
        old_daemon.close()  # unacked: back to the old queue

        topology.declare_host(channel, "b")
        assert "computing.host.b" not in _queues(vhost)
        assert _get_all(channel, topology.host_queue("b")) == [
            (topology.host_key("b"), b"held", "held")
        ]
    finally:
        connection.close()
        if old_daemon.is_open:
            old_daemon.close()
