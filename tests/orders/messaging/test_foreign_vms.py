"""A VM the shop does not own is deleted on the host that reports it, and only there (issue 20,
item 4); a superseded create-vm is never re-sent."""

from __future__ import annotations

import json
import uuid

import pytest

from orders.core.provisioning import retry_provisioning
from orders.messaging.consumer import dispatch
from orders.messaging.outbox import requeue
from orders.models import Instance, Order, OutboxMessage
from tests.orders.messaging.test_host_events import _event, _ready
from vmbackend.protocol import topology

pytestmark = pytest.mark.django_db


def _deletes(vm_id: str) -> list[str]:
    return [
        row.routing_key
        for row in OutboxMessage.objects.filter(body__command="delete-vm")
        if row.body["options"]["vm-id"] == vm_id
    ]


def _retried(instance: Instance) -> tuple[str, Instance]:
    Instance.objects.filter(pk=instance.pk).update(status="failed", host_id="host-a")
    Order.objects.filter(pk=instance.order_id).update(status="failed")
    old_vm_id = str(instance.public_id)
    return old_vm_id, retry_provisioning(instance=Instance.objects.get(pk=instance.pk))


def test_an_event_for_a_superseded_vm_id_deletes_that_vm_on_its_host_only(instance):
    old_vm_id, retried = _retried(instance)
    before = set(_deletes(old_vm_id))
    late = {**_ready(instance, 9, "host-b"), "instance_id": old_vm_id}

    result, reason = dispatch(json.dumps(late).encode(), "guest")

    assert (result, reason) == ("unknown_vm_deleted", "")
    assert set(_deletes(old_vm_id)) - before == {topology.host_key("host-b")}
    assert Instance.objects.get(pk=instance.pk).public_id == retried.public_id  # untouched
    # Again while that delete-vm is unsent: not a second one.
    dispatch(json.dumps({**late, "seq": 10}).encode(), "guest")
    assert _deletes(old_vm_id).count(topology.host_key("host-b")) == 1


def test_a_vm_that_is_already_gone_needs_no_delete(instance):
    stranger = str(uuid.uuid4())
    for kind in ("instance.deleted", "instance.failed"):
        event = {**_event(instance, kind, 3), "instance_id": stranger, "reason": "gone"}
        assert dispatch(json.dumps(event).encode(), "guest") == ("unknown_instance", "")
    assert _deletes(stranger) == []


def test_requeue_refuses_a_superseded_create_vm(instance):
    from django.utils import timezone

    old_vm_id, retried = _retried(instance)
    OutboxMessage.objects.update(sent_at=timezone.now())
    creates = OutboxMessage.objects.filter(body__command="create-vm").order_by("id")
    old, current = list(creates)
    assert old.body["options"]["vm-id"] == old_vm_id

    assert requeue(message=old) is False
    assert requeue(message=current) is True
    old.refresh_from_db()
    assert old.sent_at is not None
