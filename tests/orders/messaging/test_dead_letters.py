"""Reading computing.dead back (orders/messaging/dead_letters.py) against the real RabbitMQ: a
create-vm a host refused fails its order with the host's reason; everything else is kept for
staff."""

from __future__ import annotations

import json

import pika
import pytest
from django.db import transaction

from orders.billing.cancellation import cancel_order
from orders.core.provisioning import request_provisioning, retry_provisioning
from orders.messaging import dead_letters
from orders.messaging.consumer import EventConsumer
from orders.messaging.dead_letters import handle_dead_letter
from orders.models import DeadLetter, Instance, Order, OutboxMessage
from tests.orders.conftest import get_all
from vmbackend.protocol import messages, topology

pytestmark = pytest.mark.django_db

REASON = "options.memory-mb must be between 256 and 16384"


@pytest.fixture
def instance(order: Order) -> Instance:
    with transaction.atomic():
        return request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))


def _refused_by_host(
    channel, body: bytes, *, host: str = "host-a", key: str = "create-vm", reason: str = REASON
) -> None:
    """What a daemon does with a command it refuses (vmbackend.amqp_io.dead_letter)."""
    topology.publish_dead_letter(
        channel,
        key,
        body,
        pika.BasicProperties(message_id="m-1"),
        reason,
        {"x-warren-host-id": host, "x-warren-routing-key": key},
    )


def _create_vm_body(instance: Instance) -> bytes:
    return messages.encode(
        OutboxMessage.objects.get(instance=instance, routing_key="create-vm").body
    )


def _drain(url: str) -> dict[str, int]:
    return EventConsumer(url=url, idle_timeout=0.3).run(once=True)


def test_a_refused_create_vm_fails_the_order_with_the_hosts_reason(instance, amqp, orders_amqp_url):
    _refused_by_host(amqp, _create_vm_body(instance))

    counts = _drain(orders_amqp_url)

    assert counts == {"dead_letter_order_failed": 1}
    fresh = Instance.objects.select_related("order").get(pk=instance.pk)
    assert (fresh.status, fresh.order.status) == (Instance.Status.FAILED, Order.Status.FAILED)
    assert fresh.failure_reason == f"host host-a refused the create-vm: {REASON}"
    (dead,) = DeadLetter.objects.all()
    assert (dead.rejected_by, dead.routing_key, dead.reason, dead.result, dead.instance) == (
        "host-a",
        "create-vm",
        REASON,
        "order_failed",
        fresh,
    )
    assert dead.message_id == "m-1"
    # The customer's password does not sit in the dead-letter table.
    assert instance.admin_password not in dead.body
    assert json.loads(dead.body)["options"]["admin"]["password"] == "********"
    assert get_all(amqp, topology.DEAD_QUEUE) == []  # read and acked

    # Staff fix the cause and retry: a new create-vm under a fresh vm-id.
    retried = retry_provisioning(instance=fresh)
    assert (retried.status, retried.order.status) == ("requested", "paid")
    assert OutboxMessage.objects.filter(routing_key="create-vm").count() == 2


def test_a_refused_create_vm_of_a_vm_a_host_has_changes_nothing(instance, amqp, orders_amqp_url):
    """A duplicate copy refused by one host while another host took the first one."""
    body = messages.event("instance.accepted", instance_id=instance.vm_id, host_id="host-b", seq=1)
    amqp.basic_publish(
        "warren.events",
        "instance.accepted",
        messages.encode_event(body),
        pika.BasicProperties(user_id="guest"),
    )
    _drain(orders_amqp_url)
    _refused_by_host(amqp, _create_vm_body(instance), host="host-a")

    counts = _drain(orders_amqp_url)

    assert counts == {"dead_letter_ignored": 1}
    assert Instance.objects.get(pk=instance.pk).status == Instance.Status.BOOTING


def test_a_refused_create_vm_of_a_cancelled_order_finishes_the_deletion(
    instance, amqp, orders_amqp_url
):
    cancel_order(order=instance.order, reason="changed my mind", cancel_subscription=False)
    _refused_by_host(amqp, _create_vm_body(instance))

    counts = _drain(orders_amqp_url)

    assert counts == {"dead_letter_deletion_finished": 1}
    fresh = Instance.objects.select_related("order").get(pk=instance.pk)
    assert (fresh.status, fresh.order.status) == ("deleted", "deleted")
    assert fresh.admin_password == ""


@pytest.mark.parametrize(
    "body",
    [
        messages.command("delete-vm", {"vm-id": "x"}),
        b"\x00\xff garbage",
        b'{"options": {"admin": {"password": "s3cret-s3cret-s3cret"',  # cut off: not JSON
        b"[" * 5000,
    ],
    ids=["delete-vm", "binary", "cut-off-json", "deep"],
)
def test_any_other_dead_letter_is_kept_for_staff(body, instance, amqp, orders_amqp_url):
    _refused_by_host(amqp, body, key="host.host-a", reason="unknown vm-id")

    counts = _drain(orders_amqp_url)

    assert counts == {"dead_letter_recorded": 1}
    (dead,) = DeadLetter.objects.all()
    assert (dead.reason, dead.routing_key) == ("unknown vm-id", "host.host-a")
    assert "\x00" not in dead.body
    assert "s3cret" not in dead.body
    assert Instance.objects.get(pk=instance.pk).status == Instance.Status.REQUESTED


def test_the_dead_letter_table_keeps_the_newest_rows(monkeypatch):
    monkeypatch.setattr(dead_letters, "DEAD_LETTERS_KEPT", 3)

    for n in range(5):
        handle_dead_letter(body=b"x", headers={"x-warren-reject-reason": f"r{n}"}, routing_key="k")

    assert list(DeadLetter.objects.values_list("reason", flat=True)) == ["r4", "r3", "r2"]


def test_headers_of_any_shape_are_recorded_safely():
    result = handle_dead_letter(
        body=b"{}",
        headers={"x-warren-reject-reason": b"bytes\x00reason", "x-warren-host-id": 42},
        routing_key="k" * 400,
    )

    (dead,) = DeadLetter.objects.all()
    assert result == "recorded"
    assert (dead.reason, dead.rejected_by, len(dead.routing_key)) == ("bytes\\x00reason", "42", 255)


def test_staff_see_the_hosts_reason_in_the_admin(instance, client, django_user_model):
    handle_dead_letter(
        body=_create_vm_body(instance),
        headers={"x-warren-reject-reason": REASON, "x-warren-host-id": "host-a"},
        routing_key="create-vm",
    )
    staff = django_user_model.objects.create_superuser("root", "root@example.com", "pw-12345678")
    client.force_login(staff)

    dead_list = client.get("/admin/orders/deadletter/")
    dead = DeadLetter.objects.get()
    dead_page = client.get(f"/admin/orders/deadletter/{dead.pk}/change/")
    instances = client.get("/admin/orders/instance/", {"status__exact": "failed"})

    assert REASON in dead_list.content.decode()
    assert "order_failed" in dead_list.content.decode()
    assert instance.admin_password not in dead_page.content.decode()
    assert "host host-a refused the create-vm" in instances.content.decode()
    # The body is no lookup: it could be an oracle for what it holds.
    assert client.get("/admin/orders/deadletter/", {"body__contains": "a"}).status_code != 200
