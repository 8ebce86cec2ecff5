"""Placement with real parts: two real daemons (each its own capacity) booting the tiny image
under QEMU, the real broker, and the shop's own relay step and event worker in this process.
A large plan goes to the host with room for it; a small one packs onto the other; the shop's
rows say where each VM is, and each host holds only what fits it."""

from __future__ import annotations

import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from orders.core.provisioning import request_provisioning
from orders.messaging import outbox
from orders.messaging.consumer import EventConsumer
from orders.models import Host, Instance, Order
from store.models import Plan
from tests.vmbackend.daemon_helpers import qemu_pids, vms_of, wait_host
from vmbackend.client import Client

READY_TIMEOUT = 300


# Both daemons log in as guest, the development mode the shop accepts with this fixture.
pytestmark = pytest.mark.usefixtures("shared_broker_user")


def _plan(slug: str, memory: int) -> Plan:
    return Plan.objects.create(
        slug=slug,
        name=slug,
        memory_mb=memory,
        vcpus=1,
        disk_gb=1,
        max_connections=10,
        max_queues=10,
        monthly_price_cents=100,
    )


def _paid(plan: Plan) -> Instance:
    user = get_user_model().objects.create_user(f"u{uuid.uuid4().hex[:8]}", "u@example.com", "x")
    order = Order.objects.create(user=user, plan=plan)
    with transaction.atomic():
        instance = request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))
    assert instance is not None
    return instance


def _consume_until(amqp_url: str, done, timeout: float, what: str) -> None:
    consumer = EventConsumer(url=amqp_url, idle_timeout=0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        consumer.run(once=True)
        if done():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.vm
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(900)
def test_a_large_plan_goes_to_the_host_with_room_and_a_small_one_packs_beside(
    daemons, amqp_url, settings
):
    settings.INSTANCE_IMAGE = "tiny"
    settings.PLACEMENT = "pack"
    common = {"WARREN_HOST_CPUS": "2", "WARREN_HOST_DISK_GB": "20", "WARREN_METRICS_INTERVAL": "0"}
    small = daemons.start(capacity=4, extra_env={**common, "WARREN_HOST_MEMORY_MB": "512"})
    big = daemons.start(capacity=4, extra_env={**common, "WARREN_HOST_MEMORY_MB": "2048"})
    with Client(amqp_url) as client:
        wait_host(client, small.host_id)
        wait_host(client, big.host_id)
    _consume_until(
        amqp_url,
        lambda: (
            Host.objects.filter(
                host_id__in=[small.host_id, big.host_id], memory_total_mb__gt=0
            ).count()
            == 2
        ),
        60,
        "both hosts' heartbeats with their resources",
    )
    large = _paid(_plan("large", 1024))
    little = _paid(_plan("little", 256))

    connection, channel = outbox.open_channel(amqp_url)
    try:
        assert outbox.publish_pending(channel) == 2
    finally:
        connection.close()

    # The large one fits only the big host; the small one then packs onto the fuller host
    # that fits it: the small host (512 free) rather than the big one (1024 left after the claim).
    assert Instance.objects.get(pk=large.pk).placed_on == big.host_id
    assert Instance.objects.get(pk=little.pk).placed_on == small.host_id

    def both_ready() -> bool:
        return (
            Instance.objects.filter(
                pk__in=[large.pk, little.pk], status=Instance.Status.READY
            ).count()
            == 2
        )

    _consume_until(amqp_url, both_ready, READY_TIMEOUT, "both VMs ready")
    large, little = Instance.objects.get(pk=large.pk), Instance.objects.get(pk=little.pk)
    assert (large.host_id, little.host_id) == (big.host_id, small.host_id)
    assert large.order.status == Order.Status.READY and little.order.status == Order.Status.READY
    with Client(amqp_url) as client:
        on_big, on_small = vms_of(client, big.host_id), vms_of(client, small.host_id)
    assert set(on_big) == {large.vm_id} and on_big[large.vm_id]["memory-mb"] == 1024
    assert set(on_small) == {little.vm_id}
    assert len(qemu_pids(big.state_dir)) == 1 and len(qemu_pids(small.state_dir)) == 1
    # The heartbeats now say what the shop placed: each host's memory used is its VM's.
    _consume_until(
        amqp_url,
        lambda: (
            Host.objects.get(host_id=big.host_id).memory_used_mb == 1024
            and Host.objects.get(host_id=small.host_id).memory_used_mb == 256
        ),
        30,
        "heartbeats with the VMs' memory",
    )
