"""The staff's fleet view (orders/fleet/overview.py, admin:orders_host_fleet) and the latest sample
in the instance list."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from orders.fleet.overview import fleet
from orders.models import Host, Instance
from orders.monitoring import metrics
from tests.orders.monitoring.test_metrics import sample

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready(instance: Instance) -> Instance:
    Instance.objects.filter(pk=instance.pk).update(
        status=Instance.Status.READY, host_id="host-a", ready_at=timezone.now()
    )
    instance.refresh_from_db()
    return instance


def _feed(instance: Instance, seconds_ago: int, **values) -> None:
    metrics.apply_metrics(
        instance_id=instance.public_id,
        host_id=instance.host_id,
        at=timezone.now() - timedelta(seconds=seconds_ago),
        metrics=sample(**values),
    )


def test_per_host_its_vms_cpu_memory_capacity_and_heartbeat(ready):
    beat = timezone.now() - timedelta(seconds=5)
    Host.objects.create(
        host_id="host-a", last_heartbeat_at=beat, capacity=4, running=1, free_slots=3
    )
    Host.objects.create(host_id="host-idle", last_heartbeat_at=beat, capacity=2, free_slots=2)
    _feed(ready, 60, cpu_percent=10.0)
    _feed(ready, 30, cpu_percent=12.5, rss_bytes=2**30, connections=17)
    hosts = {row.host_id: row for row in fleet(timezone.now())}
    assert set(hosts) == {"host-a", "host-idle"}
    a = hosts["host-a"]
    assert [vm.instance.pk for vm in a.vms] == [ready.pk]
    assert a.vms[0].sample is not None and a.vms[0].sample.connections == 17  # the latest
    assert (a.cpu_percent, a.rss_bytes) == (12.5, 2**30)
    assert hosts["host-idle"].vms == []


def test_an_instance_on_a_host_that_never_sent_a_heartbeat_is_listed(ready):
    rows = fleet(timezone.now())
    assert [(r.host_id, r.host, len(r.vms)) for r in rows] == [("host-a", None, 1)]
    assert rows[0].vms[0].sample is None


def test_staff_see_the_fleet_page(admin_client, ready):
    Host.objects.create(
        host_id="host-a", last_heartbeat_at=timezone.now(), capacity=4, running=1, free_slots=3
    )
    _feed(ready, 30, connections=23, cpu_percent=33.3)
    page = admin_client.get(reverse("admin:orders_host_fleet")).content.decode()
    assert 'id="host-host-a"' in page
    assert "3 of 4 slots" in page
    assert "33.3 %" in page
    assert f'data-instance="{ready.public_id}"' in page
    assert "<td>23</td>" in page
    hosts = admin_client.get(reverse("admin:orders_host_changelist")).content.decode()
    assert reverse("admin:orders_host_fleet") + "#host-host-a" in hosts


def test_the_instance_list_shows_the_latest_sample(admin_client, ready):
    _feed(ready, 30, reachable=False)
    page = admin_client.get(reverse("admin:orders_instance_changelist")).content.decode()
    assert "not answering" in page


def test_customers_do_not_see_the_fleet(client, customer):
    client.force_login(customer)
    answer = client.get(reverse("admin:orders_host_fleet"))
    assert answer.status_code == 302 and "/login/" in answer["Location"]


def test_staff_see_the_firing_alarms(admin_client, ready):
    for seconds_ago in (90, 60, 30):
        _feed(ready, seconds_ago, disk_alarm=True)
    page = admin_client.get(
        reverse("admin:orders_alarm_changelist"), {"status__exact": "firing"}
    ).content.decode()
    assert '<td class="field-kind">Disk alarm</td>' in page
    assert '<td class="field-kind">Memory alarm</td>' not in page
