"""`warren run` gives the shop and its host broker users of their own (issue 20, item 1), on
the real broker: each service gets its own URL, the users exist with their permissions, and the
shared development mode is used only when asked for."""

from __future__ import annotations

import uuid
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
import pytest

from vmbackend.protocol import broker_users, topology
from warren import broker_setup


def test_with_user_keeps_everything_but_the_login():
    url = "amqps://guest:guest@mq.example:5671/%2F?heartbeat=30"
    assert broker_setup.with_user(url, "warren-host-a", "p@ss/w:rd") == (
        "amqps://warren-host-a:p%40ss%2Fw%3Ard@mq.example:5671/%2F?heartbeat=30"
    )


def test_the_shared_development_mode_only_when_asked():
    env = {"WARREN_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F"}
    shared = broker_setup.service_environments({**env, "WARREN_BROKER_SHARED_USER": "guest"}, "box")
    assert shared == {"vmbackend": {"WARREN_COMMAND_SENDERS": "guest"}}


def test_each_service_gets_its_own_user(amqp_url):
    host_id = f"run-{uuid.uuid4().hex[:8]}"
    shop = f"warren-shop-{host_id}"
    try:
        services = broker_setup.service_environments(
            {"WARREN_AMQP_URL": amqp_url}, host_id, shop_user=shop
        )
        shop_url = services["relay"]["WARREN_AMQP_URL"]
        host_url = services["vmbackend"]["WARREN_AMQP_URL"]
        assert {services[name]["WARREN_AMQP_URL"] for name in broker_setup.SHOP_SERVICES} == {
            shop_url
        }
        assert urlsplit(shop_url).username == shop
        assert urlsplit(host_url).username == broker_users.host_user(host_id)
        assert services["vmbackend"]["WARREN_COMMAND_SENDERS"] == shop
        assert unquote(urlsplit(host_url).path) == unquote(urlsplit(amqp_url).path)

        # The host's user logs in, and is a host: the shop's event queue is closed to it.
        connection = pika.BlockingConnection(pika.URLParameters(host_url))
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                connection.channel().basic_get(topology.EVENTS_STORE_QUEUE)
            assert refused.value.reply_code == 403
        finally:
            if connection.is_open:
                connection.close()
        shop_connection = pika.BlockingConnection(pika.URLParameters(shop_url))
        topology.declare_common(shop_connection.channel())  # the shop may declare
        shop_connection.close()
    finally:
        broker_users.delete_user(shop)
        broker_users.delete_user(broker_users.host_user(host_id))
