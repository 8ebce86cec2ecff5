"""The shop declares the control broker's topology exactly as the host daemon does."""

from __future__ import annotations

import pika.exceptions
import pytest

from orders import broker


def test_the_shop_and_the_daemon_declare_the_same_topology(orders_amqp_url):
    topology = pytest.importorskip("vmbackend.topology")
    connection = broker.connect(orders_amqp_url)
    try:
        channel = connection.channel()
        # Either side may come first; RabbitMQ refuses a redeclaration with other arguments.
        broker.declare_topology(channel)
        topology.declare_host(channel, "host-orders-test")
        topology.declare_common(channel)
        broker.declare_topology(channel)
        assert channel.is_open
        assert topology.CREATE_QUEUE == broker.CREATE_VM_QUEUE
        assert topology.WORK_QUEUE_ARGS == broker.WORK_QUEUE_ARGUMENTS
        assert topology.REJECT_HEADER == broker.REJECT_HEADER
        channel.queue_delete(topology.host_queue("host-orders-test"))
    finally:
        connection.close()


def test_a_declaration_with_other_arguments_would_be_refused(orders_amqp_url):
    connection = broker.connect(orders_amqp_url)
    try:
        channel = connection.channel()
        broker.declare_topology(channel)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare(broker.CREATE_VM_QUEUE, durable=True)  # no DLX argument
        assert refused.value.reply_code == 406
    finally:
        connection.close()
