"""The host-event consumer against the real RabbitMQ: events change instances and orders once."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pika
import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.billing.cancellation import cancel_order
from orders.core.provisioning import request_provisioning, retry_provisioning
from orders.fleet.hosts import instances_on_silent_hosts, mark_silent_hosts
from orders.messaging.consumer import EventConsumer, dispatch
from orders.messaging.host_events import handle_message
from orders.models import (
    HOST_EVENT_TRANSITIONS,
    ORDER_STATUS_FOR_INSTANCE,
    DeadLetter,
    Host,
    Instance,
    Order,
    OutboxMessage,
)
from tests.orders.conftest import get_all
from vmbackend.protocol import events, messages, topology, wire

pytestmark = pytest.mark.django_db


def _event(
    instance: Instance, event_type: str, seq: int, host: str = "host-a", **extra: Any
) -> dict:
    return {
        "version": 1,
        "message_id": str(uuid.uuid4()),
        "type": event_type,
        "instance_id": str(instance.public_id),
        "host_id": host,
        "occurred_at": timezone.now().isoformat(),
        "seq": seq,
        **extra,
    }


def _ready(instance: Instance, seq: int, host: str = "host-a") -> dict:
    return _event(
        instance,
        "instance.ready",
        seq,
        host,
        management_url="http://127.0.0.1:20001/",
        amqp_url="amqp://warren-x@127.0.0.1:20002/",
        admin_username=instance.admin_username,
        ip_addresses=["10.0.2.15"],
        boot="cold",
        seconds=1.5,
    )


def _publish(channel: Any, *events: dict | bytes) -> None:
    for event in events:
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        key = event["type"] if isinstance(event, dict) else "instance.garbage"
        channel.basic_publish(
            "warren.events",
            key,
            body,
            pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id="m1", user_id="guest"
            ),
        )


def _consume(url: str) -> dict[str, int]:
    return EventConsumer(url=url, idle_timeout=0.3).run(once=True)


def _fresh(instance: Instance) -> Instance:
    return Instance.objects.select_related("order").get(pk=instance.pk)


def test_a_vm_goes_from_accepted_to_ready(instance, amqp, orders_amqp_url):
    _publish(amqp, _event(instance, "instance.accepted", 1, image="rabbitmq"))
    _consume(orders_amqp_url)
    assert (_fresh(instance).status, _fresh(instance).order.status) == ("booting", "provisioning")

    _publish(amqp, _event(instance, "instance.progress", 2, stage="rabbitmq_starting"))
    _consume(orders_amqp_url)
    assert _fresh(instance).stage == "rabbitmq_starting"

    _publish(amqp, _ready(instance, 3))
    counts = _consume(orders_amqp_url)

    fresh = _fresh(instance)
    assert counts == {"applied": 1}
    assert (fresh.status, fresh.order.status) == (Instance.Status.READY, Order.Status.READY)
    assert fresh.management_url == "http://127.0.0.1:20001/"
    assert fresh.amqp_url == "amqp://warren-x@127.0.0.1:20002/"
    assert (fresh.host_id, fresh.last_event_seq) == ("host-a", 3)
    assert fresh.ready_at is not None
    assert get_all(amqp, topology.EVENTS_STORE_QUEUE) == []  # acked


def test_a_failed_vm_fails_the_order_with_the_reason(instance, amqp, orders_amqp_url):
    _publish(
        amqp,
        _event(instance, "instance.accepted", 1),
        _event(instance, "instance.failed", 2, reason="management API never answered"),
    )

    _consume(orders_amqp_url)

    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (Instance.Status.FAILED, Order.Status.FAILED)
    assert fresh.failure_reason == "management API never answered"


def test_a_repeated_event_changes_nothing(instance, amqp, orders_amqp_url):
    ready = _ready(instance, 3)
    _publish(amqp, ready)
    _consume(orders_amqp_url)
    before = _fresh(instance)

    _publish(amqp, ready, ready)
    counts = _consume(orders_amqp_url)

    after = _fresh(instance)
    assert counts == {"stale": 2}
    assert (after.updated_at, after.order.updated_at) == (
        before.updated_at,
        before.order.updated_at,
    )


def test_an_old_event_after_a_newer_one_changes_nothing(instance, amqp, orders_amqp_url):
    _publish(
        amqp,
        _ready(instance, 5),
        _event(instance, "instance.failed", 4, reason="old news"),
        _event(instance, "instance.progress", 3, stage="guest_up"),
    )

    counts = _consume(orders_amqp_url)

    fresh = _fresh(instance)
    assert counts == {"applied": 1, "stale": 2}
    assert (fresh.status, fresh.failure_reason, fresh.stage) == (Instance.Status.READY, "", "")


def test_a_newer_event_against_the_allowed_transitions_changes_nothing(instance):
    handle_message(json.dumps(_ready(instance, 1)).encode())

    result = handle_message(json.dumps(_event(instance, "instance.accepted", 2)).encode())

    assert result == "ignored"
    assert _fresh(instance).status == Instance.Status.READY


def _body(**fields: Any) -> bytes:
    """An instance.accepted for some other instance with `fields` replacing its own."""
    event = {
        "version": 1,
        "type": "instance.accepted",
        "host_id": "h",
        "instance_id": str(uuid.uuid4()),
        "seq": 1,
        **fields,
    }
    return json.dumps({k: v for k, v in event.items() if v is not None}).encode()


HOSTILE_EVENTS = {
    "not-json": b"{not json",
    "array": b"[1, 2]",
    "no-instance": _body(type="instance.ready", instance_id=None),
    "bad-uuid": _body(type="instance.ready", instance_id="x"),
    "version-2": json.dumps({"version": 2, "type": "host.heartbeat", "host_id": "h"}).encode(),
    "negative-seq": _body(seq=-1),
    "bad-stage": _body(type="instance.progress", stage="dancing"),
    # issue 9, item 4: each of these crashed (SQLite) or looped (PostgreSQL) the worker.
    "seq-10^30": _body(seq=10**30),
    "seq-2^63": _body(seq=2**63),
    "negative-count": json.dumps(
        {"version": 1, "type": "host.heartbeat", "host_id": "h", "capacity": -1}
    ).encode(),
    "over-long-host-id": _body(host_id="h" * 300),
    "over-long-reason": _body(type="instance.failed", reason="x" * 5000),
    "nul-byte": _body(type="instance.failed", reason="boom\x00"),
    "nul-in-key": json.dumps(
        {"version": 1, "type": "host.heartbeat", "host_id": "h", "x\x00": 1}
    ).encode(),
    "ftp-management-url": _body(
        type="instance.ready", management_url="ftp://127.0.0.1/", amqp_url="amqp://u@h:1/"
    ),
    "javascript-management-url": _body(
        type="instance.ready", management_url="javascript:alert(1)", amqp_url="amqp://u@h:1/"
    ),
    "amqp-url-port-99999": _body(
        type="instance.ready", management_url="http://h:1/", amqp_url="amqp://u@h:99999/"
    ),
    "amqp-url-with-a-password": _body(
        type="instance.ready", management_url="http://h:1/", amqp_url="amqp://u:pw@h:1/"
    ),
}


@pytest.mark.parametrize("body", HOSTILE_EVENTS.values(), ids=HOSTILE_EVENTS.keys())
def test_a_malformed_event_is_dead_lettered_and_the_next_one_applied(
    body, instance, amqp, orders_amqp_url
):
    _publish(amqp, body, _event(instance, "instance.accepted", 1))

    counts = _consume(orders_amqp_url)

    # Dead-lettered to computing.dead, which the worker reads back and keeps for staff.
    assert counts == {"rejected": 1, "applied": 1, "dead_letter_recorded": 1}
    (dead,) = DeadLetter.objects.all()
    assert (dead.rejected_by, dead.routing_key, dead.result) == (
        "shop",
        "instance.garbage",
        "recorded",
    )
    assert dead.reason
    assert "\x00" not in dead.body and len(dead.body) <= 8000
    assert get_all(amqp, topology.DEAD_QUEUE) == []
    assert get_all(amqp, topology.EVENTS_STORE_QUEUE) == []
    assert _fresh(instance).status == Instance.Status.BOOTING


def test_an_event_the_database_refuses_is_dead_lettered_and_the_next_one_applied(
    instance, amqp, orders_amqp_url, monkeypatch
):
    """An apply that fails for good (here a seq past the column's range, let through by a parser
    with wider bounds: PostgreSQL raises DataError, SQLite OverflowError) is dead-lettered with
    the error as the reason; the event behind it is applied."""
    monkeypatch.setattr(events, "MAX_SEQ", 10**30)  # where the parser reads them
    monkeypatch.setattr(wire, "MAX_INT_DIGITS", 40)
    _publish(
        amqp,
        _event(instance, "instance.accepted", 10**25),
        _event(instance, "instance.accepted", 1),
    )

    counts = _consume(orders_amqp_url)

    assert counts == {"rejected": 1, "applied": 1, "dead_letter_recorded": 1}
    (dead,) = DeadLetter.objects.all()
    assert dead.reason.startswith("could not be applied: ")
    assert ("DataError" in dead.reason) or ("OverflowError" in dead.reason)
    fresh = _fresh(instance)
    assert (fresh.status, fresh.last_event_seq) == (Instance.Status.BOOTING, 1)


def test_an_event_for_an_unknown_instance_is_acknowledged(instance, amqp, orders_amqp_url):
    stranger = Instance(public_id=uuid.uuid4())
    _publish(amqp, _ready(stranger, 1))

    counts = _consume(orders_amqp_url)

    assert counts == {"unknown_vm_deleted": 1}  # its host is told to delete it (issue 20)
    assert get_all(amqp, topology.EVENTS_STORE_QUEUE) == []
    assert _fresh(instance).status == Instance.Status.REQUESTED


def test_an_unknown_event_type_is_acknowledged(instance, amqp, orders_amqp_url):
    _publish(amqp, _event(instance, "instance.hibernated", 1))

    assert _consume(orders_amqp_url) == {"unhandled_type": 1}


def test_ready_after_cancellation_deletes_the_vm_again(instance, amqp, orders_amqp_url):
    cancel_order(order=instance.order, reason="changed my mind")
    assert OutboxMessage.objects.filter(routing_key="delete-vm").count() == 1

    _publish(amqp, _event(instance, "instance.accepted", 1), _ready(instance, 2))
    counts = _consume(orders_amqp_url)

    assert counts == {"deletion_resent": 2}
    assert OutboxMessage.objects.filter(routing_key="delete-vm").count() == 3
    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (Instance.Status.DELETING, Order.Status.DELETING)
    assert fresh.management_url == ""  # never shown for a cancelled order


def test_deleted_finishes_a_cancellation(instance, amqp, orders_amqp_url):
    OutboxMessage.objects.update(sent_at=timezone.now())  # the relay sent the create-vm
    _publish(amqp, _ready(instance, 1))
    _consume(orders_amqp_url)
    cancel_order(order=instance.order, reason="done")

    _publish(amqp, _event(instance, "instance.deleted", 2))
    _consume(orders_amqp_url)

    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (Instance.Status.DELETED, Order.Status.DELETED)
    # The password does not outlive the VM: gone from the instance and the sent create-vm row.
    assert fresh.admin_password == ""
    assert OutboxMessage.objects.get(routing_key="create-vm").body["options"]["admin"] == {
        "username": instance.admin_username,
        "password": "",
    }


def test_a_lost_vm_fails_the_order_and_staff_retry_under_a_new_vm_id(
    instance, amqp, orders_amqp_url
):
    _publish(amqp, _ready(instance, 1), _event(instance, "instance.lost", 2, reason="qemu died"))
    _consume(orders_amqp_url)
    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (Instance.Status.LOST, Order.Status.FAILED)
    old_vm_id = fresh.vm_id

    retried = retry_provisioning(instance=fresh)

    assert retried.vm_id != old_vm_id
    assert (retried.status, retried.attempts, retried.host_id) == ("requested", 2, "")
    assert Order.objects.get(pk=instance.order_id).status == Order.Status.PAID
    create = OutboxMessage.objects.filter(routing_key="create-vm").latest("id")
    assert create.body["options"]["vm-id"] == retried.vm_id
    assert OutboxMessage.objects.get(routing_key="delete-vm").body["options"]["vm-id"] == old_vm_id
    # Late news about the old vm-id no longer touches the order.
    late = json.dumps({**_ready(instance, 9), "instance_id": old_vm_id}).encode()
    assert handle_message(late) == "unknown_vm_deleted"  # but its host deletes that VM


def test_events_from_a_second_host_are_ignored_unless_it_has_the_only_ready_vm(instance):
    handle_message(json.dumps(_event(instance, "instance.accepted", 1, host="host-a")).encode())

    assert (
        handle_message(
            json.dumps(_event(instance, "instance.failed", 1, host="host-b", reason="x")).encode()
        )
        == "other_host"
    )
    assert _fresh(instance).status == Instance.Status.BOOTING

    assert handle_message(json.dumps(_ready(instance, 4, host="host-b")).encode()) == "applied"
    fresh = _fresh(instance)
    assert (fresh.status, fresh.host_id) == (Instance.Status.READY, "host-b")
    cleanup = OutboxMessage.objects.get(routing_key="host.host-a")
    assert cleanup.body["options"]["vm-id"] == fresh.vm_id


def test_heartbeats_record_hosts_and_silent_hosts_are_marked(
    instance, amqp, orders_amqp_url, settings
):
    settings.HOST_HEARTBEAT_TIMEOUT = 90
    beat = {
        "version": 1,
        "message_id": "b1",
        "type": "host.heartbeat",
        "instance_id": None,
        "host_id": "host-a",
        "seq": 1,
        "capacity": 2,
        "running": 1,
        "free_slots": 1,
        "daemon_version": "0.3",
    }
    _publish(amqp, beat, _ready(instance, 1))
    _consume(orders_amqp_url)

    host = Host.objects.get(host_id="host-a")
    assert (host.capacity, host.running, host.free_slots, host.silent_since) == (2, 1, 1, None)
    assert host.version == "0.3"
    assert mark_silent_hosts(timezone.now()) == []

    later = host.last_heartbeat_at + timedelta(seconds=91)
    assert mark_silent_hosts(later) == [host]
    assert Host.objects.get(pk=host.pk).silent_since == later
    assert list(instances_on_silent_hosts()) == [_fresh(instance)]

    _publish(amqp, beat)  # the host is back
    _consume(orders_amqp_url)
    assert Host.objects.get(pk=host.pk).silent_since is None
    assert list(instances_on_silent_hosts()) == []


def test_the_command_drains_the_queue(instance, amqp, orders_amqp_url):
    _publish(amqp, _event(instance, "instance.accepted", 1))

    call_command("consume_events", "--once", "--url", orders_amqp_url)

    assert _fresh(instance).status == Instance.Status.BOOTING


def test_a_lost_vm_booted_again_by_its_host_makes_the_order_ready_again(instance):
    handle_message(json.dumps(_ready(instance, 1)).encode())
    handle_message(json.dumps(_event(instance, "instance.lost", 2, reason="qemu died")).encode())
    assert _fresh(instance).order.status == Order.Status.FAILED

    handle_message(json.dumps(_event(instance, "instance.started", 3)).encode())
    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (
        Instance.Status.BOOTING,
        Order.Status.PROVISIONING,
    )

    handle_message(json.dumps(_ready(instance, 4)).encode())
    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (Instance.Status.READY, Order.Status.READY)
    assert fresh.failure_reason == ""


def test_ready_again_after_a_restart_updates_the_urls(instance):
    handle_message(json.dumps(_ready(instance, 1)).encode())
    again = {**_ready(instance, 4), "management_url": "http://127.0.0.1:20011/"}

    assert handle_message(json.dumps(again).encode()) == "applied"

    fresh = _fresh(instance)
    assert (fresh.status, fresh.management_url) == (
        Instance.Status.READY,
        "http://127.0.0.1:20011/",
    )


def test_a_failed_vm_never_comes_back_by_itself(instance):
    handle_message(
        json.dumps(_event(instance, "instance.failed", 1, reason="boot timeout")).encode()
    )

    assert handle_message(json.dumps(_ready(instance, 2)).encode()) == "ignored"

    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (Instance.Status.FAILED, Order.Status.FAILED)


def test_a_ready_vm_on_a_second_host_replaces_a_lost_one(instance):
    handle_message(json.dumps(_ready(instance, 1, host="host-a")).encode())
    handle_message(json.dumps(_event(instance, "instance.lost", 2, host="host-a")).encode())

    assert handle_message(json.dumps(_ready(instance, 1, host="host-b")).encode()) == "applied"

    fresh = _fresh(instance)
    assert (fresh.status, fresh.host_id, fresh.order.status) == ("ready", "host-b", "ready")
    assert OutboxMessage.objects.filter(routing_key="host.host-a").count() == 1


def test_a_server_its_host_restarts_stays_ready_and_the_restart_is_recorded(instance):
    handle_message(json.dumps(_ready(instance, 1)).encode())
    crashed = _event(instance, "instance.restarting", 2, reason="QEMU exited", attempt=1)

    assert handle_message(json.dumps(crashed).encode()) == "applied"
    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (Instance.Status.READY, Order.Status.READY)
    assert fresh.is_restarting and fresh.restart_count == 1
    assert fresh.last_crash_at is not None and fresh.last_restart_at is None
    assert fresh.failure_reason == "QEMU exited"

    # A second attempt for the same stop is not a second crash.
    again = _event(instance, "instance.restarting", 3, reason="boot failed", attempt=2)
    handle_message(json.dumps(again).encode())
    assert _fresh(instance).restart_count == 1

    # Boot progress of the restart leaves the ready server alone.
    progress = _event(instance, "instance.progress", 4, stage="guest_up")
    assert handle_message(json.dumps(progress).encode()) == "ignored"

    assert handle_message(json.dumps(_ready(instance, 5)).encode()) == "applied"
    fresh = _fresh(instance)
    assert not fresh.is_restarting
    assert fresh.last_restart_at is not None and fresh.last_restart_at >= fresh.last_crash_at
    assert (fresh.status, fresh.order.status) == (Instance.Status.READY, Order.Status.READY)


def test_a_server_whose_restarts_failed_is_lost_and_the_order_failed(instance):
    handle_message(json.dumps(_ready(instance, 1)).encode())
    handle_message(json.dumps(_event(instance, "instance.restarting", 2, attempt=1)).encode())
    handle_message(
        json.dumps(_event(instance, "instance.lost", 3, reason="gave up after 3 restarts")).encode()
    )
    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (Instance.Status.LOST, Order.Status.FAILED)
    assert fresh.ran_once and "gave up" in fresh.failure_reason


def test_a_lost_server_its_host_restarts_is_booting_again(instance):
    handle_message(json.dumps(_ready(instance, 1)).encode())
    handle_message(json.dumps(_event(instance, "instance.lost", 2, reason="gone")).encode())
    handle_message(json.dumps(_event(instance, "instance.restarting", 3, attempt=1)).encode())
    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (
        Instance.Status.BOOTING,
        Order.Status.PROVISIONING,
    )
    handle_message(json.dumps(_ready(instance, 4)).encode())
    fresh = _fresh(instance)
    assert (fresh.status, fresh.order.status) == (Instance.Status.READY, Order.Status.READY)
    assert fresh.last_restart_at is not None and not fresh.is_restarting


# -- the event -> transition table ------------------------------------------------------------------


def test_every_step_of_the_event_table_is_an_allowed_transition():
    for (event_type, status), step in HOST_EVENT_TRANSITIONS.items():
        assert event_type in messages.INSTANCE_EVENTS
        if step.instance_to is not None:
            assert Instance(status=status).can_move_to(step.instance_to), (event_type, status)
        for order_status in step.order_from:
            assert Order(status=order_status).can_move_to(step.order_to), (event_type, order_status)
        assert step.effect in {"", *EFFECTS}


EFFECTS = {"resend_deletion", "forget_credentials", "update_urls", "update_stage", "record_crash"}
_EVENT_FIELDS = {
    "instance.progress": {"stage": "guest_up"},
    "instance.ready": {
        "management_url": "http://127.0.0.1:1/",
        "amqp_url": "amqp://u@127.0.0.1:2/",
    },
    "instance.failed": {"reason": "boom"},
    "instance.lost": {"reason": "gone"},
    "instance.restarting": {"reason": "QEMU exited", "attempt": 1},
    "instance.command_done": {"command": "restart-vm"},
    "instance.command_failed": {"command": "restart-vm", "reason": "the VM is stopped"},
}


# The factory makes a fresh order per example, so sharing it across examples is intended.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.sampled_from([*sorted(messages.INSTANCE_EVENTS), "cancel"]), max_size=8))
def test_any_sequence_of_host_events_keeps_order_and_instance_in_step(order_factory, steps):
    """Property: whatever a host reports, in any order, the handler never raises and the order's
    status stays the one that matches its instance (cancelled for a failed VM cancelled)."""
    instance = order_factory()
    for seq, step in enumerate(steps, start=1):
        if step == "cancel":
            cancel_order(order=instance.order, reason="test", cancel_subscription=False)
        else:
            body = messages.event(
                step,
                instance_id=instance.vm_id,
                host_id="host-a",
                seq=seq,
                **_EVENT_FIELDS.get(step, {}),
            )
            result = handle_message(messages.encode_event(body))
            # unknown_command: an outcome of a console command this shop never sent
            assert result in {"applied", "ignored", "deletion_resent", "unknown_command"}
        fresh = _fresh(instance)
        expected = ORDER_STATUS_FOR_INSTANCE[fresh.status]
        if fresh.order.status == Order.Status.CANCELLED:
            assert fresh.status in Instance.WITHOUT_VM
        else:
            assert fresh.order.status == expected, (steps[:seq], fresh.status)


@pytest.fixture
def order_factory(plan, customer):
    def make() -> Instance:
        with transaction.atomic():
            fresh = Order.objects.create(user=customer, plan=plan)
            return request_provisioning(order=Order.objects.select_for_update().get(pk=fresh.pk))

    return make


# -- hostile bodies through the worker's dispatch (no broker) ---------------------------------------

_HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.text(min_size=400, max_size=600),
    st.sampled_from(["\x00", "ftp://x/", "javascript:alert(1)", "http://a b/", "\ud800"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
_FIELDS = [
    "version",
    "type",
    "host_id",
    "instance_id",
    "seq",
    "message_id",
    "occurred_at",
    "stage",
    "management_url",
    "amqp_url",
    "admin_username",
    "ip_addresses",
    "boot",
    "seconds",
    "reason",
    "capacity",
    "running",
    "free_slots",
    "daemon_version",
    "memory_total_mb",
    "memory_used_mb",
    "vcpus_total",
    "disk_used_gb",
    # fields added with the console, metrics, the pool and TLS
    "runtime",
    "command",
    "request_id",
    "memory_mb",
    "vcpus",
    "disk_gb",
    "pool",
    "reachable",
    "messages_ready",
    "publish_rate",
    "mem_alarm",
    "uptime_s",
    "cpu_percent",
    "rss_bytes",
]
# Bodies no parser may choke on: deep nesting, near the size bound and past it.
_MONSTERS = st.one_of(
    st.integers(1, 20_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(60_000, 70_000).map(
        lambda n: json.dumps({"type": "instance.metrics", "host_id": "a", "pad": "x" * n}).encode()
    ),
)


@st.composite
def _event_bodies(draw: Any, vm_id: str) -> bytes:
    """A valid event for our instance, then some fields replaced by hostile values (or none)."""
    kind = draw(
        st.sampled_from(
            [
                *sorted(messages.INSTANCE_EVENTS),
                messages.HEARTBEAT,
                messages.INSTANCE_DECLINED,
                messages.INSTANCE_METRICS,
            ]
        )
    )
    if kind == messages.INSTANCE_METRICS:
        body = messages.metrics_event(
            instance_id=vm_id,
            host_id=draw(st.sampled_from(["a", "b"])),
            metrics=messages.Metrics(reachable=True, messages_ready=5, cpu_percent=1.0),
        )
        for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
            body[name] = draw(_HOSTILE_VALUES)
        return json.dumps(body).encode(errors="surrogatepass")
    body = messages.event(
        kind,
        instance_id=vm_id,
        host_id=draw(st.sampled_from(["a", "b"])),
        seq=draw(st.integers(0, 50)),
        **_EVENT_FIELDS.get(kind, {}),
    )
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
        body[name] = draw(_HOSTILE_VALUES)
    return json.dumps(body).encode(errors="surrogatepass")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_worker_never_raises_on_any_body(instance, data):
    """Property: whatever arrives, dispatch (what the consumer runs per delivery) answers a
    result, and a reason exactly when it must be dead-lettered; the order stays consistent."""
    body = data.draw(st.one_of(st.binary(max_size=200), _MONSTERS, _event_bodies(instance.vm_id)))

    result, reason = dispatch(body, "guest")

    assert result in {
        "applied",
        "ignored",
        "stale",
        "deletion_resent",
        "other_host",
        "duplicate_deleted",
        "unhandled_type",
        "unknown_instance",
        "unknown_vm_deleted",
        "unknown_command",  # a console outcome for a command this shop never sent
        "replaced",  # instance.declined by the host it was placed on (orders/fleet/placement.py)
        # instance.metrics (orders/metrics.apply_metrics)
        "recorded",
        "duplicate",
        "stored_late",
        "rejected",
    }
    assert bool(reason) == (result == "rejected")
    fresh = _fresh(instance)
    assert fresh.order.status == ORDER_STATUS_FOR_INSTANCE[fresh.status] or (
        fresh.order.status == Order.Status.CANCELLED
    )


# -- duplicate VMs on two hosts (issue 9, item 5) -----------------------------------------------


def _handle(event: dict) -> str:
    return handle_message(json.dumps(event).encode())


def _deletes_for(host: str) -> list[str]:
    return [
        row.body["options"]["vm-id"]
        for row in OutboxMessage.objects.filter(routing_key=f"host.{host}")
    ]


def test_a_second_hosts_copy_of_a_ready_vm_is_deleted_on_that_host_only(instance):
    _handle(_event(instance, "instance.accepted", 1, host="host-a"))
    _handle(_ready(instance, 2, host="host-a"))

    assert _handle(_event(instance, "instance.accepted", 1, host="host-b")) == "duplicate_deleted"
    assert (
        _handle(_event(instance, "instance.progress", 2, host="host-b", stage="guest_up"))
        == "duplicate_deleted"
    )
    # Its copy is gone: nothing more to ask.
    assert _handle(_event(instance, "instance.deleted", 3, host="host-b")) == "other_host"

    assert _deletes_for("host-b") == [instance.vm_id, instance.vm_id]
    assert _deletes_for("host-a") == []
    assert not OutboxMessage.objects.filter(routing_key="delete-vm").exists()  # no broadcast
    fresh = _fresh(instance)
    assert (fresh.status, fresh.host_id, fresh.order.status) == ("ready", "host-a", "ready")


def test_while_neither_copy_is_ready_both_boot_and_the_first_ready_wins(instance):
    _handle(_event(instance, "instance.accepted", 1, host="host-a"))
    assert _handle(_event(instance, "instance.accepted", 1, host="host-b")) == "other_host"
    assert OutboxMessage.objects.filter(routing_key__startswith="host.").count() == 0

    assert _handle(_ready(instance, 2, host="host-b")) == "applied"  # b first: b wins
    assert _handle(_ready(instance, 3, host="host-a")) == "duplicate_deleted"

    fresh = _fresh(instance)
    assert (fresh.status, fresh.host_id, fresh.order.status) == ("ready", "host-b", "ready")
    assert _deletes_for("host-a") == [instance.vm_id, instance.vm_id]
    assert _deletes_for("host-b") == []


def test_a_copy_already_asked_to_go_never_takes_over(instance):
    _handle(_ready(instance, 1, host="host-a"))
    _handle(_event(instance, "instance.accepted", 1, host="host-b"))  # b is asked to delete
    _handle(_event(instance, "instance.lost", 2, host="host-a", reason="qemu died"))

    assert _handle(_ready(instance, 2, host="host-b")) == "other_host"

    fresh = _fresh(instance)
    assert (fresh.status, fresh.host_id) == ("lost", "host-a")


@pytest.mark.parametrize("end", ["cancelled", "failed"])
def test_a_copy_of_an_ended_order_is_deleted_on_its_host(instance, end):
    _handle(_event(instance, "instance.accepted", 1, host="host-a"))
    if end == "cancelled":
        cancel_order(order=instance.order, reason="bye", cancel_subscription=False)
    else:
        _handle(_event(instance, "instance.failed", 2, host="host-a", reason="boom"))

    assert _handle(_ready(instance, 4, host="host-b")) == "duplicate_deleted"

    assert _deletes_for("host-b") == [instance.vm_id]
    assert _fresh(instance).management_url == ""
