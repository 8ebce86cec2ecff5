"""The shop declares the control broker's topology exactly as the host daemon does."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from orders.messaging import broker
from tests.orders.conftest import get_all
from vmbackend.protocol import topology


@pytest.mark.parametrize("shop_first", [True, False])
def test_the_shop_and_the_daemon_declare_the_same_topology(orders_amqp_url, shop_first):
    connection = broker.connect(orders_amqp_url)
    try:
        channel = connection.channel()
        # Either side may come first; RabbitMQ refuses a redeclaration with other arguments
        # (PRECONDITION_FAILED closes the channel), so an open channel after both is the proof.
        sides = [broker.declare_topology, lambda ch: topology.declare_host(ch, "host-orders-test")]
        for declare in sides if shop_first else sides[::-1]:
            declare(channel)
        broker.declare_topology(channel)
        assert channel.is_open
        channel.queue_delete(topology.host_queue("host-orders-test"))
    finally:
        connection.close()


def test_a_declaration_with_other_arguments_would_be_refused(orders_amqp_url):
    connection = broker.connect(orders_amqp_url)
    try:
        channel = connection.channel()
        broker.declare_topology(channel)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare(topology.CREATE_QUEUE, durable=True)  # no DLX argument
        assert refused.value.reply_code == 406
    finally:
        connection.close()


def test_a_dead_letter_keeps_the_message_and_says_why_and_where(amqp):
    original = pika.BasicProperties(
        content_type="application/json",
        message_id="m-1",
        correlation_id="c-1",
        headers={"x-sender": "ops-script"},
    )

    topology.publish_dead_letter(
        amqp,
        "create-vm",
        b'{"command": 1}',
        original,
        "r" * 2000,
        {"x-warren-host-id": "host-a"},
    )

    ((method, properties, body),) = get_all(amqp, topology.DEAD_QUEUE)
    assert (body, method.routing_key) == (b'{"command": 1}', "create-vm")
    assert (properties.message_id, properties.correlation_id) == ("m-1", "c-1")
    assert properties.delivery_mode == 2
    properties.headers.pop("x-delivery-count", None)  # the quorum queue's own, on delivery
    assert properties.headers == {
        "x-sender": "ops-script",
        "x-warren-host-id": "host-a",
        topology.REJECT_HEADER: "r" * topology.MAX_REJECT_REASON,
    }


def test_a_dead_letter_without_properties_gets_a_message_id(amqp):
    topology.publish_dead_letter(amqp, "x", b"junk", None, "not JSON")

    ((_, properties, _),) = get_all(amqp, topology.DEAD_QUEUE)
    assert properties.message_id
    properties.headers.pop("x-delivery-count", None)  # the quorum queue's own, on delivery
    assert properties.headers == {topology.REJECT_HEADER: "not JSON"}
