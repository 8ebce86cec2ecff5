"""Losing a host: its customers' pages say so, and evacuating re-creates each VM elsewhere
(fresh vm-id, same credentials, told plainly that the data is gone), once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from orders.fleet import evacuation
from orders.fleet.hosts import mark_silent_hosts
from orders.models import Activity, Host, Instance, Order, OutboxMessage
from tests.orders.admin.test_admin import _action
from tests.orders.console_support import HOST, make_ready
from vmbackend.protocol import messages, topology

pytestmark = pytest.mark.django_db


def _silent(host_id: str = HOST, seconds: int = 600) -> Host:
    host, _ = Host.objects.update_or_create(
        host_id=host_id,
        defaults={"last_heartbeat_at": timezone.now() - timedelta(seconds=seconds)},
    )
    mark_silent_hosts(timezone.now())
    host.refresh_from_db()
    assert host.silent_since is not None
    return host


def test_the_order_page_says_the_servers_host_is_unreachable(client, customer, instance):
    ready = make_ready(instance)
    client.force_login(customer)
    url = reverse("orders:detail", args=[ready.order.public_id])
    assert 'id="host-notice"' not in client.get(url).content.decode()
    _silent()
    page = client.get(url).content.decode()
    assert 'id="host-notice"' in page
    assert "your server is unreachable" in page


def test_evacuating_re_creates_the_server_elsewhere_with_the_same_credentials(
    instance, django_capture_on_commit_callbacks
):
    ready = make_ready(instance)
    old_vm_id, password = ready.vm_id, ready.admin_password
    _silent()
    with django_capture_on_commit_callbacks(execute=True):
        assert evacuation.evacuate_host(host_id=HOST, by="staff") == 1
    moved = Instance.objects.select_related("order").get(pk=ready.pk)
    assert moved.status == Instance.Status.REQUESTED and moved.order.status == Order.Status.PAID
    assert moved.vm_id != old_vm_id and moved.host_id == "" and moved.management_url == ""
    assert (moved.admin_username, moved.admin_password) == (ready.admin_username, password)
    assert moved.declined_by == [HOST]
    rows = OutboxMessage.objects.filter(instance=moved).order_by("id")
    delete, create = rows.reverse()[1], rows.reverse()[0]
    assert (delete.routing_key, delete.body["options"]["vm-id"]) == (
        topology.host_key(HOST),
        old_vm_id,
    )
    assert (create.routing_key, create.body["options"]["vm-id"]) == ("create-vm", moved.vm_id)
    line = Activity.objects.filter(order=moved.order).first()
    assert line is not None and "Data on the old server" in line.message
    assert mail.outbox[-1].subject.endswith("is being re-created on another host")
    assert "password" not in mail.outbox[-1].body.lower().replace("user name and password", "")

    # Again (staff twice, or staff and the worker): nothing more moves.
    assert evacuation.evacuate_host(host_id=HOST, by="staff") == 0
    # The lost host's late event about the old vm-id changes nothing.
    late = messages.event(
        messages.INSTANCE_READY,
        instance_id=old_vm_id,
        host_id=HOST,
        seq=99,
        management_url="http://127.0.0.1:1/",
        amqp_url="amqp://u@127.0.0.1:2/",
    )
    from orders.messaging.host_events import handle_message

    assert handle_message(messages.encode_event(late)) == "unknown_vm_deleted"


def test_a_create_vm_the_lost_host_never_took_is_placed_again_under_its_vm_id(instance):
    Instance.objects.filter(pk=instance.pk).update(placed_on=HOST, placement_tries=1)
    _silent()
    assert evacuation.evacuate_host(host_id=HOST, by="automatic") == 1
    again = Instance.objects.get(pk=instance.pk)
    assert (again.vm_id, again.placed_on, again.declined_by) == (instance.vm_id, "", [HOST])
    assert OutboxMessage.objects.filter(instance=again, routing_key="create-vm").count() == 2


def test_a_past_due_order_is_not_moved(instance):
    ready = make_ready(instance)
    Order.objects.filter(pk=ready.order_id).update(status=Order.Status.PAST_DUE)
    _silent()
    assert evacuation.evacuate_host(host_id=HOST, by="staff") == 0


def test_the_worker_evacuates_only_after_the_configured_silence(instance, settings):
    ready = make_ready(instance)
    host = _silent()
    settings.HOST_EVACUATE_AFTER = 0
    assert evacuation.evacuate_silent_hosts(timezone.now()) == 0  # off
    settings.HOST_EVACUATE_AFTER = 300
    assert evacuation.evacuate_silent_hosts(host.silent_since + timedelta(seconds=299)) == 0
    assert evacuation.evacuate_silent_hosts(host.silent_since + timedelta(seconds=301)) == 1
    assert Instance.objects.get(pk=ready.pk).status == Instance.Status.REQUESTED


def test_staff_evacuate_a_silent_host_but_not_one_that_answers(admin_client, instance):
    ready = make_ready(instance)
    alive = Host.objects.create(host_id=HOST, last_heartbeat_at=timezone.now())
    page = _action(admin_client, "host", "evacuate", alive.pk).content.decode()
    assert "answers and is not draining" in page
    assert Instance.objects.get(pk=ready.pk).status == Instance.Status.READY
    _silent()
    page = _action(admin_client, "host", "evacuate", alive.pk).content.decode()
    assert "1 VM(s) being re-created elsewhere" in page
    assert Instance.objects.get(pk=ready.pk).status == Instance.Status.REQUESTED
