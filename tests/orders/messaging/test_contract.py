"""The shop and the daemon agree on the wire format (fast: no broker, no VM).

Both sides use vmbackend/messages.py; these tests hold the two halves against each other: what the
shop writes to its outbox (and the relay publishes) is read by the daemon's parser with the same
fields, and every event the daemon builds is read by the shop's parser and applied.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from orders.billing.cancellation import cancel_order
from orders.core.provisioning import body_to_publish, request_provisioning
from orders.messaging.host_events import handle_message
from orders.models import Instance, Order, OutboxMessage
from vmbackend.protocol import messages
from vmbackend.protocol.messages import CreateVM, VMCommand

pytestmark = pytest.mark.django_db


@pytest.fixture
def instance(order: Order) -> Instance:
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        return request_provisioning(order=locked)


def _published(row: OutboxMessage) -> bytes:
    """The bytes the relay puts on the wire for a row (orders/messaging/outbox.py publish_row)."""
    return messages.encode(body_to_publish(row))


@override_settings(INSTANCE_IMAGE="rabbitmq")
def test_the_create_vm_the_shop_writes_is_read_by_the_daemon_field_by_field(order):
    with transaction.atomic():
        instance = request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))
    row = OutboxMessage.objects.get(routing_key="create-vm")
    plan = order.plan

    command = messages.parse(_published(row))

    assert command == CreateVM(
        vm_id=str(instance.public_id),
        image="rabbitmq",
        memory_mb=plan.memory_mb,
        vcpus=plan.vcpus,
        disk_gb=plan.disk_gb,
        admin_username=instance.admin_username,
        admin_password=instance.admin_password,
        password_generated=False,
        limits={"max-connections": plan.max_connections, "max-queues": plan.max_queues},
    )


def test_the_delete_vm_the_shop_writes_is_read_by_the_daemon(instance):
    cancel_order(order=instance.order, reason="customer", cancel_subscription=False)
    row = OutboxMessage.objects.get(routing_key="delete-vm")

    assert messages.parse(_published(row)) == VMCommand("delete-vm", str(instance.public_id))


def _daemon_events(vm_id: str) -> list[dict[str, Any]]:
    """Every event type, with the fields the daemon sends (vmbackend/daemon.py, provision.py)."""

    def event(type_: str, seq: int, **fields: Any) -> dict[str, Any]:
        return messages.event(type_, instance_id=vm_id, host_id="host-a", seq=seq, **fields)

    return [
        event("instance.accepted", 1, image="rabbitmq"),
        event("instance.progress", 2, stage="vm_starting"),
        event("instance.progress", 3, stage="guest_up"),
        event("instance.progress", 4, stage="rabbitmq_starting"),
        event(
            "instance.ready",
            5,
            management_url="http://127.0.0.1:20001/",
            amqp_url="amqp://warren-3f9e1c@127.0.0.1:20002/",
            admin_username="warren-3f9e1c",
            ip_addresses=["10.0.2.15"],
            boot="cold",
            seconds=101.7,
        ),
        event("instance.stopped", 6),
        event("instance.started", 7),
        event(
            "instance.ready",
            8,
            management_url="http://127.0.0.1:20001/",
            amqp_url="amqp://warren-3f9e1c@127.0.0.1:20002/",
            admin_username="warren-3f9e1c",
            ip_addresses=[],
            boot="restore",
            seconds=None,
        ),
        event("instance.lost", 9, reason="QEMU process was gone when the daemon started"),
        event(
            "instance.failed", 10, reason="guest agent did not answer; console tail: " + "x" * 9000
        ),
        event("instance.deleted", 11),
    ]


def test_every_event_the_daemon_builds_is_read_by_the_shop_with_its_fields(instance):
    for body in _daemon_events(instance.vm_id):
        event = messages.parse_event(messages.encode_event(body))

        assert (event.type, event.host_id, event.seq) == (body["type"], "host-a", body["seq"])
        assert event.instance_id == instance.public_id
        assert event.message_id == body["message_id"]
        for name in ("stage", "management_url", "amqp_url", "admin_username", "reason", "image"):
            assert getattr(event, name) == body.get(name, ""), name


def test_a_heartbeat_the_daemon_builds_is_read_by_the_shop():
    body = messages.event(
        "host.heartbeat",
        instance_id=None,
        host_id="host-a",
        seq=42,
        capacity=2,
        running=1,
        free_slots=1,
        daemon_version="0.1.0",
    )

    event = messages.parse_event(messages.encode_event(body))

    assert (event.capacity, event.running, event.free_slots, event.daemon_version) == (
        2,
        1,
        1,
        "0.1.0",
    )
    assert handle_message(messages.encode_event(body)) == "applied"


def test_a_boot_the_daemon_reports_makes_the_order_ready(instance):
    results = [
        handle_message(messages.encode_event(body)) for body in _daemon_events(instance.vm_id)[:5]
    ]

    assert results == ["applied"] * 5
    instance.refresh_from_db()
    assert instance.status == Instance.Status.READY
    assert instance.order.status == Order.Status.READY


def test_a_long_failure_reason_is_cut_by_the_builder_not_refused_by_the_shop():
    body = messages.event(
        "instance.failed",
        instance_id="0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10",
        host_id="h",
        seq=1,
        reason="y" * 100_000,
    )

    assert len(messages.parse_event(messages.encode_event(body)).reason) == messages.MAX_REASON


_host_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


@settings(max_examples=100, deadline=None)
@given(
    host_id=_host_ids,
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    vm_id=st.uuids(),
    stage=st.sampled_from(messages.STAGES),
    port=st.integers(min_value=1, max_value=65535),
    username=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"),
    reason=st.text(max_size=200).filter(lambda t: "\x00" not in t),
)
def test_any_event_the_daemon_can_build_is_accepted_by_the_shop(
    host_id, seq, vm_id, stage, port, username, reason
):
    """Property: the builder's output within the daemon's own bounds always parses."""
    cases = {
        "instance.progress": {"stage": stage},
        "instance.ready": {
            "management_url": f"http://127.0.0.1:{port}/",
            "amqp_url": f"amqp://{username}@127.0.0.1:{port}/",
            "admin_username": username,
            "ip_addresses": ["10.0.2.15"],
            "boot": "cold",
            "seconds": 1.5,
        },
        "instance.failed": {"reason": reason},
    }
    for type_, fields in cases.items():
        body = messages.event(type_, instance_id=str(vm_id), host_id=host_id, seq=seq, **fields)
        event = messages.parse_event(messages.encode_event(body))
        assert (event.host_id, event.seq, event.instance_id) == (host_id, seq, vm_id)


def test_the_wire_format_is_the_documented_one(instance):
    """docs/protocol.md: version, command, options; the shop adds nothing else."""
    body = json.loads(_published(OutboxMessage.objects.get(routing_key="create-vm")))

    assert set(body) == {"version", "command", "options"}
    assert set(body["options"]) == {
        "image",
        "vm-id",
        "memory-mb",
        "vcpus",
        "disk-gb",
        "admin",
        "limits",
    }


# -- the customer's console (issue 11) ------------------------------------------------------------


def test_the_console_commands_the_shop_builds_are_read_by_the_daemon_on_its_own_key(instance):
    from vmbackend.host.rules import parse_host
    from vmbackend.protocol.messages import ResizeVM, SetAdminPassword

    request_id = "5f1d2c3b-4a59-4e8f-9d0c-1b2a3c4d5e6f"
    vm_id = str(instance.public_id)
    bodies = {
        messages.encode(
            messages.set_admin_password_body(
                vm_id=vm_id,
                request_id=request_id,
                username=instance.admin_username,
                password="A-new-password-0123456789",
            )
        ): SetAdminPassword(
            vm_id, request_id, instance.admin_username, "A-new-password-0123456789"
        ),
        messages.encode(
            messages.resize_vm_body(
                vm_id=vm_id, request_id=request_id, memory_mb=1024, vcpus=2, disk_gb=10
            )
        ): ResizeVM(vm_id, request_id, 1024, 2, 10),
        messages.encode(messages.restart_vm_body(vm_id=vm_id, request_id=request_id)): VMCommand(
            "restart-vm", vm_id, request_id=request_id
        ),
    }
    for body, expected in bodies.items():
        assert parse_host(body, routing_key="host.host-a", host_key="host.host-a") == expected
    # Never broadcast: a console command on another routing key is dead-lettered.
    with pytest.raises(messages.Rejected, match="routing key host"):
        parse_host(
            messages.encode(
                messages.resize_vm_body(
                    vm_id=vm_id, request_id=request_id, memory_mb=1024, vcpus=2, disk_gb=10
                )
            ),
            routing_key="resize-vm",
            host_key="host.host-a",
        )


def test_the_console_outcomes_the_daemon_builds_are_read_by_the_shop(instance):
    request_id = "5f1d2c3b-4a59-4e8f-9d0c-1b2a3c4d5e6f"

    def event(type_: str, seq: int, **fields: Any) -> bytes:
        return messages.encode_event(
            messages.event(type_, instance_id=instance.vm_id, host_id="host-a", seq=seq, **fields)
        )

    done = messages.parse_event(
        event(
            "instance.command_done",
            1,
            command="resize-vm",
            request_id=request_id,
            memory_mb=1024,
            vcpus=2,
            disk_gb=10,
        )
    )
    assert (done.command, str(done.request_id), done.memory_mb, done.vcpus, done.disk_gb) == (
        "resize-vm",
        request_id,
        1024,
        2,
        10,
    )
    failed = messages.parse_event(
        event(
            "instance.command_failed",
            2,
            command="set-admin-password",
            request_id=request_id,
            reason="the VM is stopped; try again when it is running",
        )
    )
    assert (failed.command, failed.reason) == (
        "set-admin-password",
        "the VM is stopped; try again when it is running",
    )
    ready = messages.parse_event(
        event(
            "instance.ready",
            3,
            management_url="http://127.0.0.1:20001/",
            amqp_url="amqp://u@127.0.0.1:20002/",
            runtime={"rabbitmq_version": "4.0.5", "erlang_version": "26.2.5", "node": "rabbit@vm"},
        )
    )
    assert (ready.rabbitmq_version, ready.erlang_version, ready.node) == (
        "4.0.5",
        "26.2.5",
        "rabbit@vm",
    )
    assert all(ev.instance_id == instance.public_id for ev in (done, failed, ready))
