"""Placement (orders/fleet/placement.py) with the real broker and database: the relay sends each
paid order's create-vm to a live host where it fits (pack or spread), claims count before any
heartbeat, a decline places it again elsewhere, and nothing that fits nowhere is dropped."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.core.provisioning import request_provisioning
from orders.fleet import placement, rooms
from orders.fleet.hosts import mark_silent_hosts
from orders.messaging.consumer import EventConsumer
from orders.messaging.host_events import handle_message
from orders.messaging.outbox import publish_pending
from orders.models import Activity, Host, Instance, Order, OutboxMessage
from store.models import Plan
from tests.orders.conftest import get_all
from vmbackend.protocol import topology

pytestmark = pytest.mark.django_db


def heartbeat(host_id: str, total: int, vcpus: int = 8, disk: int = 100, **used: int) -> dict:
    return {
        "version": 1,
        "message_id": str(uuid.uuid4()),
        "type": "host.heartbeat",
        "instance_id": None,
        "host_id": host_id,
        "seq": 1,
        "capacity": 100,
        "running": 0,
        "free_slots": 100,
        "memory_total_mb": total,
        "memory_used_mb": used.get("memory", 0),
        "memory_free_mb": total - used.get("memory", 0),
        "vcpus_total": vcpus,
        "vcpus_used": used.get("vcpus", 0),
        "vcpus_free": vcpus - used.get("vcpus", 0),
        "disk_total_gb": disk,
        "disk_used_gb": used.get("disk", 0),
        "disk_free_gb": disk - used.get("disk", 0),
    }


def beat(*bodies: dict) -> None:
    for body in bodies:
        assert handle_message(json.dumps(body).encode()) == "applied"


@pytest.fixture
def hosts(amqp: Any) -> Iterator[Any]:
    """make(memory, ...) -> a host id with its own queue on the test vhost and one heartbeat."""
    made: list[str] = []

    def make(total: int, **kw: Any) -> str:
        host_id = f"p-{uuid.uuid4().hex[:8]}"
        topology.declare_host(amqp, host_id)
        made.append(host_id)
        beat(heartbeat(host_id, total, **kw))
        return host_id

    yield make
    for host_id in made:
        amqp.queue_delete(topology.host_queue(host_id))


@pytest.fixture
def plans(db: None) -> dict[str, Plan]:
    def plan(slug: str, memory: int, vcpus: int = 1, disk: int = 4) -> Plan:
        return Plan.objects.create(
            slug=slug,
            name=slug.title(),
            memory_mb=memory,
            vcpus=vcpus,
            disk_gb=disk,
            max_connections=100,
            max_queues=100,
            monthly_price_cents=900,
            currency="usd",
        )

    return {"small": plan("small", 512), "large": plan("large", 2048, vcpus=2, disk=20)}


def paid(plan: Plan) -> Instance:
    user = get_user_model().objects.create_user(f"u-{uuid.uuid4().hex[:8]}", "u@example.com", "x")
    order = Order.objects.create(user=user, plan=plan)
    from django.db import transaction

    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        instance = request_provisioning(order=locked)
    assert instance is not None
    return instance


def relay(amqp: Any) -> int:
    """One pass of the relay, on a confirm-mode channel as the relay has."""
    channel = amqp.connection.channel()
    channel.confirm_delivery()
    try:
        return publish_pending(channel)
    finally:
        channel.close()


def in_queue(amqp: Any, host_id: str | None) -> list[str]:
    """vm-ids of the create-vms now in a host's queue (or the shared one, host None)."""
    queue = topology.host_queue(host_id) if host_id else topology.CREATE_QUEUE
    return [json.loads(body)["options"]["vm-id"] for _, _, body in get_all(amqp, queue)]


def fresh(instance: Instance) -> Instance:
    return Instance.objects.get(pk=instance.pk)


def declined(instance: Instance, host_id: str) -> dict:
    return {
        "version": 1,
        "message_id": str(uuid.uuid4()),
        "type": "instance.declined",
        "instance_id": instance.vm_id,
        "host_id": host_id,
        "seq": 0,
        "reason": "does not fit this host: 2048 MiB of memory (512 free)",
    }


def test_a_large_plan_goes_to_the_host_with_room_for_it(amqp, hosts, plans):
    small_host = hosts(1024)
    big_host = hosts(8192)
    instance = paid(plans["large"])
    assert relay(amqp) == 1
    assert in_queue(amqp, big_host) == [instance.vm_id]
    assert in_queue(amqp, small_host) == [] and in_queue(amqp, None) == []
    assert fresh(instance).placed_on == big_host
    row = OutboxMessage.objects.get(instance=instance)
    assert row.routing_key == topology.host_key(big_host) and row.sent_at is not None


@pytest.mark.parametrize(("strategy", "expected"), [("pack", 0), ("spread", 1)])
def test_pack_fills_the_fullest_host_that_fits_and_spread_the_emptiest(
    amqp, hosts, plans, settings, strategy, expected
):
    settings.PLACEMENT = strategy
    fuller = hosts(4096, memory=3000)
    emptier = hosts(4096)
    instance = paid(plans["small"])
    relay(amqp)
    assert fresh(instance).placed_on == [fuller, emptier][expected]


def test_claims_count_before_any_heartbeat_so_a_host_is_never_overfilled(amqp, hosts, plans):
    host = hosts(1100)  # room for two 512 MiB VMs, not three
    first, second, third = (paid(plans["small"]) for _ in range(3))
    relay(amqp)
    assert sorted(in_queue(amqp, host)) == sorted([first.vm_id, second.vm_id])
    assert in_queue(amqp, None) == [third.vm_id]  # nothing else fits: the shared queue
    assert fresh(third).placed_on == "" and fresh(third).unplaced_since is not None
    # Accepted VMs count as the host's until a heartbeat says more: still no room.
    for n, instance in enumerate((first, second), start=1):
        body = {**declined(instance, host), "type": "instance.accepted", "seq": n, "image": "x"}
        assert handle_message(json.dumps(body).encode()) == "applied"
    (room,) = rooms.rooms([Host.objects.get(host_id=host)])
    assert room.resources.memory_used_mb == 1024


def test_an_order_no_host_can_fit_waits_on_the_shared_queue_and_the_customer_is_told_once(
    amqp, hosts, plans
):
    hosts(1024)
    instance = paid(plans["large"])
    relay(amqp)
    assert in_queue(amqp, None) == [instance.vm_id]
    waiting = fresh(instance)
    assert waiting.unplaced_since is not None
    assert Instance.objects.filter(placement.waiting_for_room()).get() == waiting
    lines = Activity.objects.filter(order=instance.order, kind=Activity.Kind.WAITING_FOR_ROOM)
    assert [a.message for a in lines] == [placement.WAITING_MESSAGE]
    # The relay sends it again (a crash before marking it sent): no second line.
    OutboxMessage.objects.filter(instance=instance).update(sent_at=None)
    relay(amqp)
    assert lines.count() == 1


def test_a_declined_create_vm_is_placed_again_never_on_the_host_that_declined(amqp, hosts, plans):
    first = hosts(8192, memory=1000)  # pack: the fuller one first
    second = hosts(8192)
    instance = paid(plans["large"])
    relay(amqp)
    assert fresh(instance).placed_on == first
    assert handle_message(json.dumps(declined(instance, first)).encode()) == "replaced"
    # A repeat of the same decline changes nothing (the instance is no longer placed there).
    assert handle_message(json.dumps(declined(instance, first)).encode()) == "stale"
    relay(amqp)
    again = fresh(instance)
    assert (again.placed_on, again.declined_by, again.placement_tries) == (second, [first], 2)
    assert in_queue(amqp, second) == [instance.vm_id]
    assert in_queue(amqp, first) == [instance.vm_id]  # the first copy, declined by the host


def test_after_the_last_try_is_declined_it_waits_on_the_shared_queue(amqp, hosts, plans, settings):
    settings.PLACEMENT_TRIES = 2
    ids = [hosts(8192), hosts(8192), hosts(8192)]
    instance = paid(plans["large"])
    for _ in range(2):
        relay(amqp)
        handle_message(json.dumps(declined(instance, fresh(instance).placed_on)).encode())
    relay(amqp)
    done = fresh(instance)
    assert done.placed_on == "" and done.placement_tries == 2
    assert in_queue(amqp, None) == [instance.vm_id]
    assert done.unplaced_since is not None
    assert len(set(done.declined_by)) == 2 and set(done.declined_by) < set(ids)


def test_silent_draining_and_old_hosts_get_nothing(amqp, hosts, plans):
    silent = hosts(8192)
    Host.objects.filter(host_id=silent).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=600)
    )
    draining = hosts(8192)
    Host.objects.filter(host_id=draining).update(draining=True)
    old = f"p-{uuid.uuid4().hex[:8]}"  # a daemon that reports no resources
    beat({k: v for k, v in heartbeat(old, 0).items() if not k.endswith(("_mb", "_gb"))})
    instance = paid(plans["small"])
    relay(amqp)
    assert in_queue(amqp, None) == [instance.vm_id]
    assert not rooms.plan_available(plans["small"])


def silence(host_id: str) -> list[str]:
    """The host's last heartbeat ten minutes ago; the silent hosts the event worker sees."""
    Host.objects.filter(host_id=host_id).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=600)
    )
    return [host.host_id for host in mark_silent_hosts(timezone.now())]


def test_a_create_vm_left_on_a_host_that_went_silent_is_placed_again_elsewhere(amqp, hosts, plans):
    dead = hosts(8192, memory=1000)  # pack picks the fuller one
    alive = hosts(8192)
    instance = paid(plans["small"])
    relay(amqp)
    assert fresh(instance).placed_on == dead
    silent = silence(dead)
    assert placement.replace_from_silent_hosts(silent) == 1
    assert placement.replace_from_silent_hosts(silent) == 0  # once: it is no longer placed there
    relay(amqp)
    again = fresh(instance)
    assert (again.placed_on, again.declined_by, again.status) == (alive, [dead], "requested")
    assert in_queue(amqp, alive) == [instance.vm_id]


def test_the_event_worker_places_again_what_a_silent_host_never_took(
    amqp, orders_amqp_url, hosts, plans
):
    dead = hosts(8192, memory=1000)
    alive = hosts(8192)
    instance = paid(plans["small"])
    relay(amqp)
    Host.objects.filter(host_id=dead).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=600)
    )
    EventConsumer(url=orders_amqp_url).check_silent_hosts(amqp)  # the worker loop's step
    relay(amqp)
    assert fresh(instance).placed_on == alive
    assert in_queue(amqp, alive) == [instance.vm_id]


def test_a_vm_its_silent_host_already_accepted_is_left_to_staff(amqp, hosts, plans):
    host = hosts(8192, memory=1000)  # pack picks the fuller one
    hosts(8192)
    instance = paid(plans["small"])
    relay(amqp)
    body = {**declined(instance, host), "type": "instance.accepted", "seq": 1, "image": "x"}
    assert handle_message(json.dumps(body).encode()) == "applied"
    rows = OutboxMessage.objects.count()
    assert placement.replace_from_silent_hosts(silence(host)) == 0
    assert OutboxMessage.objects.count() == rows  # a VM may exist there: evacuation decides
    assert fresh(instance).placed_on == host


def test_a_host_whose_queue_is_gone_is_skipped_and_the_order_placed_elsewhere(amqp, hosts, plans):
    gone = hosts(8192, memory=4000)  # pack would pick it
    other = hosts(8192)
    amqp.queue_delete(topology.host_queue(gone))
    instance = paid(plans["small"])
    relay(amqp)
    done = fresh(instance)
    assert (done.placed_on, done.declined_by) == (other, [gone])
    assert in_queue(amqp, other) == [instance.vm_id]


def test_a_plan_is_on_sale_only_while_a_live_host_fits_it_with_the_margin(hosts, plans):
    assert rooms.plan_available(plans["large"])  # no host ever reported: sells as before
    hosts(2200)  # 2048 MiB fits, 2048 * 1.1 does not
    assert not rooms.plan_available(plans["large"])
    assert rooms.plan_available(plans["small"])
    assert rooms.available_plans([plans["small"], plans["large"]]) == {
        plans["small"].pk: True,
        plans["large"].pk: False,
    }


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    totals=st.lists(st.integers(256, 4096), min_size=1, max_size=4),
    wanted=st.lists(st.sampled_from(["small", "large"]), min_size=1, max_size=8),
)
def test_no_sequence_of_orders_ever_places_more_than_a_host_has(amqp, hosts, plans, totals, wanted):
    Instance.objects.filter(status=Instance.Status.REQUESTED).update(status=Instance.Status.FAILED)
    ids = [hosts(memory, vcpus=4, disk=60) for memory in totals]
    made = [paid(plans[name]) for name in wanted]
    relay(amqp)
    for host_id, memory in zip(ids, totals, strict=True):
        placed = [fresh(i) for i in made if fresh(i).placed_on == host_id]
        assert sum(rooms.size_of(i).memory_mb for i in placed) <= memory
        assert sorted(in_queue(amqp, host_id)) == sorted(i.vm_id for i in placed)
    shared = in_queue(amqp, None)
    assert sorted(shared) == sorted(i.vm_id for i in made if not fresh(i).placed_on)
    for host_id in ids:
        amqp.queue_delete(topology.host_queue(host_id))


def test_with_placement_shared_every_create_vm_goes_to_the_shared_queue(
    amqp, hosts, plans, settings
):
    settings.PLACEMENT = "shared"
    host = hosts(8192)
    instance = paid(plans["small"])
    relay(amqp)
    assert in_queue(amqp, None) == [instance.vm_id] and in_queue(amqp, host) == []
    assert fresh(instance).placed_on == ""
