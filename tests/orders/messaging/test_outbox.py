"""The outbox relay against the real RabbitMQ (a private vhost), including broker outages."""

from __future__ import annotations

import json
import threading
from unittest import mock

import pika.exceptions
import pytest
from django.core.management import CommandError, call_command

from orders.core.provisioning import enqueue
from orders.messaging import outbox
from orders.messaging.outbox import Relay, publish_pending
from orders.models import Order, OutboxMessage
from tests.net import free_port
from tests.orders.conftest import get_all, provision
from tests.tcp_proxy import TcpProxy
from vmbackend.protocol import topology


def _paid(order: Order) -> OutboxMessage:
    provision(order)
    return OutboxMessage.objects.get(routing_key="create-vm")


def _url_via(orders_amqp_url: str, host_port: str) -> str:
    return orders_amqp_url.replace("127.0.0.1:5672", host_port)


def _wait_until(predicate, *, timeout: float = 30.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        done.wait(0.05)
    return predicate()


@pytest.mark.django_db
def test_it_publishes_with_confirms_and_marks_the_row_sent(order, amqp, orders_amqp_url):
    row = _paid(order)

    sent = Relay(url=orders_amqp_url).run(once=True)

    assert sent == 1
    row.refresh_from_db()
    assert row.sent_at is not None
    assert (row.attempts, row.last_error) == (1, "")
    ((method, properties, body),) = get_all(amqp, topology.CREATE_QUEUE)
    published = json.loads(body)
    # The row holds no password; the relay filled in the instance's (decrypted) one.
    assert row.body["options"]["admin"]["password"] == ""
    assert published["options"]["admin"] == {
        "username": row.instance.admin_username,
        "password": row.instance.admin_password,
    }
    assert len(published["options"]["admin"]["password"]) == 32
    published["options"]["admin"]["password"] = ""
    assert published == row.body
    assert properties.content_type == "application/json"
    assert properties.delivery_mode == 2
    assert properties.message_id == str(row.message_id)
    assert method.routing_key == "create-vm"


@pytest.mark.django_db
def test_it_publishes_oldest_first_and_never_twice(order, amqp, orders_amqp_url):
    for n in range(3):
        enqueue(routing_key="create-vm", body={"version": 1, "command": "create-vm", "n": n})

    Relay(url=orders_amqp_url).run(once=True)
    Relay(url=orders_amqp_url).run(once=True)

    bodies = [json.loads(body)["n"] for _, _, body in get_all(amqp, topology.CREATE_QUEUE)]
    assert bodies == [0, 1, 2]
    assert not OutboxMessage.objects.filter(sent_at__isnull=True).exists()


@pytest.mark.django_db
def test_rows_stay_unsent_while_the_broker_is_unreachable(order, amqp, orders_amqp_url):
    row = _paid(order)
    down = _url_via(orders_amqp_url, f"127.0.0.1:{free_port()}")

    with pytest.raises(pika.exceptions.AMQPConnectionError):
        Relay(url=down).run(once=True)

    row.refresh_from_db()
    assert row.sent_at is None
    assert get_all(amqp, topology.CREATE_QUEUE) == []

    Relay(url=orders_amqp_url).run(once=True)  # the broker is back

    row.refresh_from_db()
    assert row.sent_at is not None
    assert len(get_all(amqp, topology.CREATE_QUEUE)) == 1


@pytest.mark.django_db
def test_the_command_reports_an_unreachable_broker(order, orders_amqp_url):
    row = _paid(order)
    down = _url_via(orders_amqp_url, f"127.0.0.1:{free_port()}")

    with pytest.raises(CommandError, match="rows stay unsent"):
        call_command("relay_outbox", "--once", "--url", down)

    row.refresh_from_db()
    assert row.sent_at is None


@pytest.mark.django_db
def test_the_command_publishes_pending_rows(order, amqp, orders_amqp_url):
    row = _paid(order)

    call_command("relay_outbox", "--once", "--url", orders_amqp_url)

    row.refresh_from_db()
    assert row.sent_at is not None
    assert len(get_all(amqp, topology.CREATE_QUEUE)) == 1


@pytest.mark.django_db(transaction=True)
def test_the_relay_loop_retries_until_the_broker_is_back(order, amqp, orders_amqp_url):
    proxy = TcpProxy("127.0.0.1", 5672).up()
    proxy.down()  # the port is known, every connection to it dies: the broker is "down"
    row = _paid(order)
    relay = Relay(
        url=_url_via(orders_amqp_url, proxy.url_host), backoff_initial=0.05, backoff_max=0.2
    )
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        assert not _wait_until(lambda: get_all(amqp, topology.CREATE_QUEUE), timeout=1.0)
        row.refresh_from_db()
        assert row.sent_at is None

        proxy.up()

        assert _wait_until(lambda: OutboxMessage.objects.get(pk=row.pk).sent_at is not None)
        # At least once (docs/orders.md): a publish whose confirm was lost when the proxy dropped
        # the connection is sent again, so a copy may arrive twice, always as the same message.
        published = get_all(amqp, topology.CREATE_QUEUE)
        assert published
        assert {props.message_id for _, props, _ in published} == {str(row.message_id)}
    finally:
        relay.stop()
        thread.join(timeout=10)
        proxy.down()
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_the_relay_survives_the_broker_vanishing_between_batches(order, amqp, orders_amqp_url):
    proxy = TcpProxy("127.0.0.1", 5672).up()
    relay = Relay(
        url=_url_via(orders_amqp_url, proxy.url_host),
        poll_interval=0.05,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        first = _paid(order)
        assert _wait_until(lambda: OutboxMessage.objects.get(pk=first.pk).sent_at is not None)
        proxy.down()
        second = enqueue(routing_key="create-vm", body={"version": 1, "command": "create-vm"})
        assert not _wait_until(
            lambda: OutboxMessage.objects.get(pk=second.pk).sent_at is not None, timeout=0.5
        )
        proxy.up()
        assert _wait_until(lambda: OutboxMessage.objects.get(pk=second.pk).sent_at is not None)
    finally:
        relay.stop()
        thread.join(timeout=10)
        proxy.down()
    assert len(get_all(amqp, topology.CREATE_QUEUE)) == 2


@pytest.mark.django_db
def test_a_crash_after_publishing_sends_the_row_again(order, amqp, orders_amqp_url):
    row = _paid(order)
    with mock.patch.object(outbox, "_mark_sent", side_effect=RuntimeError("killed")):
        with pytest.raises(RuntimeError):
            Relay(url=orders_amqp_url).run(once=True)
    row.refresh_from_db()
    assert row.sent_at is None

    Relay(url=orders_amqp_url).run(once=True)

    row.refresh_from_db()
    assert (row.sent_at is not None, row.attempts) == (True, 2)
    ids = {props.message_id for _, props, _ in get_all(amqp, topology.CREATE_QUEUE)}
    assert ids == {str(row.message_id)}  # delivered twice, same id: consumers de-duplicate


@pytest.mark.django_db
def test_an_unroutable_row_stays_unsent_and_does_not_block_others(amqp, orders_amqp_url):
    stuck = enqueue(routing_key="nobody-listens", body={"version": 1})
    fine = enqueue(routing_key="create-vm", body={"version": 1, "command": "create-vm"})

    Relay(url=orders_amqp_url).run(once=True)

    stuck.refresh_from_db()
    fine.refresh_from_db()
    assert stuck.sent_at is None
    assert "unroutable" in stuck.last_error
    assert fine.sent_at is not None


@pytest.mark.parametrize("key", ["delete-vm", "host.a-host-that-is-gone"])
@pytest.mark.django_db
def test_a_delete_vm_with_no_host_queue_is_marked_sent_with_a_note(key, amqp, orders_amqp_url):
    row = enqueue(routing_key=key, body={"version": 1, "command": "delete-vm"})

    Relay(url=orders_amqp_url).run(once=True)

    row.refresh_from_db()
    assert row.sent_at is not None
    assert "no host queue" in row.last_error


@pytest.mark.django_db
def test_publish_pending_skips_rows_the_broker_refused(amqp, orders_amqp_url):
    stuck = enqueue(routing_key="nobody-listens", body={"version": 1})
    skip: set[int] = set()
    _, channel = outbox.open_channel(orders_amqp_url)

    publish_pending(channel, skip=skip)
    publish_pending(channel, skip=skip)

    stuck.refresh_from_db()
    assert (stuck.attempts, skip) == (1, {stuck.pk})
    channel.connection.close()


@pytest.mark.django_db(transaction=True)
def test_stop_ends_the_loop(orders_amqp_url):
    relay = Relay(url=orders_amqp_url, poll_interval=0.05)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()

    relay.stop()
    thread.join(timeout=10)

    assert not thread.is_alive()
