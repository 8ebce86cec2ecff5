"""The shop declares the control broker's topology exactly as the host daemon does."""

from __future__ import annotations

import pika.exceptions
import pytest

from orders import broker
from vmbackend import topology


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
