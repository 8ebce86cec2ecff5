"""Hosts with broker users of their own (issue 20, item 1), on the real broker: a real daemon
logs in as warren-host-<id>, takes commands only from the shop's user, publishes its events under
its user, and a second host's user (the attacker) can neither read its queue nor command it.

The daemon runs the simulated machine driver: the broker side is what is under test here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from tests.conftest import drop_vhost, make_vhost, vhost_url
from tests.vmbackend.daemon_helpers import Daemons, vms_of
from vmbackend.client import Client
from vmbackend.protocol import broker_users, messages, topology
from warren.broker_setup import with_user


@pytest.fixture
def broker() -> Iterator[dict[str, str]]:
    """A private vhost with its topology (declared by the shop's user), a shop user, host-a's
    user and an attacker host's user; all deleted afterwards."""
    vhost = make_vhost("warren-users")
    admin_url = vhost_url(vhost)
    suffix = uuid.uuid4().hex[:8]
    shop, host_a, evil = f"warren-shop-{suffix}", f"a-{suffix}", f"evil-{suffix}"
    ops = f"ops-{suffix}"
    made = [shop, broker_users.host_user(host_a), broker_users.host_user(evil), ops]
    try:
        found = {
            "admin_url": admin_url,
            "shop_user": shop,
            "a_id": host_a,
            "evil_id": evil,
            "shop_url": with_user(admin_url, shop, broker_users.add_shop(vhost=vhost, name=shop)),
            "a_url": with_user(admin_url, made[1], broker_users.add_host(host_a, vhost=vhost)),
            "evil_url": with_user(admin_url, made[2], broker_users.add_host(evil, vhost=vhost)),
            "ops_user": ops,
            "ops_url": with_user(admin_url, ops, broker_users.add_operator(ops, vhost=vhost)),
        }
        with Client(found["shop_url"]) as shop_client:  # declares the shared topology
            topology.declare_events_store(shop_client.channel)
        yield found
    finally:
        for user in made:
            broker_users.delete_user(user)
        drop_vhost(vhost)


def _refused(url: str, action: Any) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            action(connection.channel())
    finally:
        if connection.is_open:
            connection.close()
    return refused.value.reply_code


def _forge_heartbeat_as(user: str) -> Any:
    def forge(channel: Any) -> None:
        channel.confirm_delivery()
        channel.basic_publish(
            topology.EVENTS_EXCHANGE, "host.heartbeat", b"{}", pika.BasicProperties(user_id=user)
        )

    return forge


def test_a_host_user_reaches_only_what_a_host_needs(broker):
    """Real RabbitMQ permission checks: the attacker host cannot consume host-a's queue, the
    shop's events or the dead letters, cannot delete or rebind what is not its own, and cannot
    publish an event under host-a's user. Host-a's own user declares and reads its queue."""
    own_a = topology.host_queue(broker["a_id"])
    connection = pika.BlockingConnection(pika.URLParameters(broker["a_url"]))
    assert topology.declare_host(connection.channel(), broker["a_id"]) == own_a
    assert connection.channel().basic_get(own_a) == (None, None, None)
    connection.close()

    evil = broker["evil_url"]
    assert _refused(evil, lambda ch: ch.basic_get(own_a)) == 403
    assert _refused(evil, lambda ch: ch.basic_get(topology.EVENTS_STORE_QUEUE)) == 403
    assert _refused(evil, lambda ch: ch.basic_get(topology.DEAD_QUEUE)) == 403
    assert _refused(evil, lambda ch: ch.queue_delete(topology.CREATE_QUEUE)) == 403
    assert _refused(evil, lambda ch: ch.queue_delete(own_a)) == 403
    assert _refused(evil, lambda ch: ch.exchange_delete(topology.EVENTS_EXCHANGE)) == 403
    assert _refused(evil, lambda ch: ch.queue_bind(own_a, topology.COMMANDS_EXCHANGE, "x")) == 403
    assert _refused(evil, _forge_heartbeat_as(broker_users.host_user(broker["a_id"]))) == 406


def _dead_reasons(admin_url: str, want: int, timeout: float = 20) -> list[str]:
    connection = pika.BlockingConnection(pika.URLParameters(admin_url))
    channel = connection.channel()
    reasons: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and len(reasons) < want:
        method, props, _body = channel.basic_get(topology.DEAD_QUEUE, auto_ack=True)
        if method is None:
            time.sleep(0.2)
            continue
        reasons.append(str((props.headers or {}).get(topology.REJECT_HEADER)))
    connection.close()
    return reasons


def _publish_into_queue(url: str, queue: str, body: bytes, user_id: str | None) -> None:
    """Straight into a queue through the default exchange (a host may write there: replies)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("", queue, body, pika.BasicProperties(user_id=user_id), mandatory=True)
    connection.close()


def test_the_daemon_obeys_the_shop_and_refuses_another_hosts_commands(
    broker, tmp_path, tiny_images_root
):
    daemons = Daemons(tmp_path, broker["admin_url"], tiny_images_root)
    try:
        daemons.start(
            broker["a_id"],
            amqp_url=broker["a_url"],
            extra_env={
                "WARREN_DRIVER": "simulated",
                "WARREN_SIM_BOOT_SECONDS": "0.1-0.2",
                "WARREN_COMMAND_SENDERS": broker["shop_user"],
            },
        )
        vm_id = str(uuid.uuid4())
        with Client(broker["shop_url"]) as shop:
            vms_of(shop, broker["a_id"])  # up and answering
            reply = shop.call(
                "create-vm",
                {"image": "tiny", "vm-id": vm_id},
                routing_key=topology.host_key(broker["a_id"]),
            )
            assert reply["execution-info"]["status"] == "success", reply
            deadline = time.monotonic() + 30
            while vms_of(shop, broker["a_id"])[vm_id]["status"] != "ready":
                assert time.monotonic() < deadline, "the VM never became ready"
                time.sleep(0.3)

            # Another host can only reach host-a's queue through the default exchange, where
            # the routing key is the queue's name: refused already by the parser.
            evil_user = broker_users.host_user(broker["evil_id"])
            delete = messages.command("delete-vm", {"vm-id": vm_id})
            queue = topology.host_queue(broker["a_id"])
            _publish_into_queue(broker["evil_url"], queue, delete, evil_user)
            # A user that may publish commands (an operator) but is not in the host's
            # WARREN_COMMAND_SENDERS: refused for who it is, with or without a user_id.
            with Client(broker["ops_url"]) as ops:
                ops.send("delete-vm", {"vm-id": vm_id})
                ops.user = None  # type: ignore[assignment]
                ops.send("delete-vm", {"vm-id": vm_id})

            reasons = _dead_reasons(broker["admin_url"], want=3)
            assert len(reasons) == 3, reasons
            assert any(f"sender {broker['ops_user']} may not send" in r for r in reasons), reasons
            assert any("no user_id" in r for r in reasons), reasons
            assert vms_of(shop, broker["a_id"])[vm_id]["status"] == "ready"

        # Its events carry its own user, validated by the broker.
        connection = pika.BlockingConnection(pika.URLParameters(broker["admin_url"]))
        _method, props, _body = connection.channel().basic_get(
            topology.EVENTS_STORE_QUEUE, auto_ack=True
        )
        connection.close()
        assert props is not None and props.user_id == broker_users.host_user(broker["a_id"])
    finally:
        daemons.cleanup()
