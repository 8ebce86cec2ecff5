"""Staff's side of the fleet: resources and draining per host, capacity per plan, and the paid
orders waiting for room, in the admin."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from orders.models import Host, Instance
from tests.orders.admin.test_admin import _action

pytestmark = pytest.mark.django_db


def _host(host_id: str, memory_total: int, memory_used: int = 0) -> Host:
    return Host.objects.create(
        host_id=host_id,
        last_heartbeat_at=timezone.now(),
        capacity=10,
        memory_total_mb=memory_total,
        memory_used_mb=memory_used,
        vcpus_total=8,
        disk_total_gb=100,
    )


def test_staff_drain_a_host_and_undrain_it(admin_client, plan):
    host = _host("host-maint", 8192)
    _action(admin_client, "host", "drain", host.pk)
    host.refresh_from_db()
    assert host.draining
    page = admin_client.get(reverse("admin:orders_host_changelist")).content.decode()
    assert "0 / 8192" in page  # memory used / total
    fleet = admin_client.get(reverse("admin:orders_host_fleet")).content.decode()
    assert "draining" in fleet
    assert "SOLD OUT" in fleet  # the only host drains: nothing is on sale
    _action(admin_client, "host", "undrain", host.pk)
    host.refresh_from_db()
    assert not host.draining


def test_the_fleet_view_counts_how_many_more_of_each_plan_fit(admin_client, plan):
    _host("host-a", 2048, memory_used=512)  # 1536 free: three 512 MiB plans
    _host("host-b", 1024)  # two more
    page = admin_client.get(reverse("admin:orders_host_fleet")).content.decode()
    row = page.split(f'data-plan="{plan.slug}"')[1].split("</tr>")[0]
    assert "<td>5</td>" in row and "yes" in row


def test_paid_orders_waiting_for_room_are_flagged_and_filtered(admin_client, instance):
    Instance.objects.filter(pk=instance.pk).update(unplaced_since=timezone.now())
    listing = admin_client.get(
        reverse("admin:orders_instance_changelist"), {"waiting_for_room": "yes"}
    ).content.decode()
    assert str(instance.public_id) in listing
    assert "waiting for room since" in listing
    fleet = admin_client.get(reverse("admin:orders_host_fleet")).content.decode()
    assert '<strong class="waiting-count">1</strong>' in fleet
    Instance.objects.filter(pk=instance.pk).update(unplaced_since=None)
    listing = admin_client.get(
        reverse("admin:orders_instance_changelist"), {"waiting_for_room": "yes"}
    ).content.decode()
    assert str(instance.public_id) not in listing
