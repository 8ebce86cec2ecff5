"""The state machines and the provisioning services, below the webhook."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from orders.billing.cancellation import cancel_order
from orders.core.provisioning import ProvisioningError, order_status_for, retry_provisioning
from orders.models import Instance, InvalidTransition, Order, OutboxMessage
from tests.orders.conftest import provision

pytestmark = pytest.mark.django_db


def test_every_transition_target_is_a_known_status():
    for machine in (Order, Instance):
        statuses = set(machine.Status.values)
        assert set(machine.TRANSITIONS) == statuses
        for targets in machine.TRANSITIONS.values():
            assert targets <= statuses


def test_a_transition_outside_the_machine_is_refused(order):
    with pytest.raises(InvalidTransition):
        order.move_to(Order.Status.READY)

    assert Order.objects.get(pk=order.pk).status == Order.Status.PENDING_PAYMENT


def test_a_stale_copy_loses_the_compare_and_set(order):
    stale = Order.objects.get(pk=order.pk)
    assert order.move_to(Order.Status.CANCELLED, cancelled_at=timezone.now())

    assert stale.move_to(Order.Status.PAID, paid_at=timezone.now()) is False
    assert stale.status == Order.Status.PENDING_PAYMENT  # unchanged in memory too
    assert Order.objects.get(pk=order.pk).status == Order.Status.CANCELLED


def test_the_database_refuses_an_unknown_status(order):
    with pytest.raises(IntegrityError), transaction.atomic():
        Order.objects.filter(pk=order.pk).update(status="shipped")


def test_the_database_refuses_a_paid_order_without_a_payment_time(order):
    with pytest.raises(IntegrityError), transaction.atomic():
        Order.objects.filter(pk=order.pk).update(status="paid")


def test_one_order_cannot_get_two_instances(order):
    provision(order)

    with pytest.raises(IntegrityError), transaction.atomic():
        Instance.objects.create(order=order, admin_username="x", admin_password="y")


def test_provisioning_twice_requests_one_vm(order):
    first = provision(order)
    second = provision(order)

    assert first is not None
    assert second is None
    assert OutboxMessage.objects.count() == 1


def test_credentials_are_fresh_and_strong(order, customer, plan):
    other = Order.objects.create(user=customer, plan=plan)

    a, b = provision(order), provision(other)

    assert a.admin_password != b.admin_password
    assert len(a.admin_password) == 32
    assert a.admin_username.startswith("warren-")
    assert a.admin_password not in repr(a)


def test_cancelling_a_failed_order_needs_no_deletion(order):
    instance = provision(order)
    Instance.objects.filter(pk=instance.pk).update(status="failed")
    Order.objects.filter(pk=order.pk).update(status="failed")

    cancelled = cancel_order(order=order, reason="gave up")

    assert cancelled.status == Order.Status.CANCELLED
    assert not OutboxMessage.objects.filter(routing_key="delete-vm").exists()


def test_cancelling_twice_is_harmless(order):
    provision(order)

    cancel_order(order=order, reason="one")
    again = cancel_order(order=order, reason="two")

    assert again.status == Order.Status.DELETING
    assert again.cancel_reason == "one"
    assert OutboxMessage.objects.filter(routing_key="delete-vm").count() == 1


def test_retry_refuses_an_instance_that_did_not_fail(order):
    instance = provision(order)

    with pytest.raises(ProvisioningError):
        retry_provisioning(instance=instance)


def test_a_failed_instance_is_retried_without_deleting_anything(order):
    instance = provision(order)
    Instance.objects.filter(pk=instance.pk).update(
        status="failed", failure_reason="timeout", host_id="h1"
    )
    Order.objects.filter(pk=order.pk).update(status="failed")

    retried = retry_provisioning(instance=Instance.objects.get(pk=instance.pk))

    assert (retried.status, retried.host_id, retried.failure_reason) == ("requested", "", "")
    assert retried.admin_password == instance.admin_password
    assert not OutboxMessage.objects.filter(routing_key="delete-vm").exists()
    assert OutboxMessage.objects.filter(routing_key="create-vm").count() == 2


@pytest.mark.parametrize(
    ("instance_status", "order_status"),
    [
        ("requested", "paid"),
        ("booting", "provisioning"),
        ("ready", "ready"),
        ("failed", "failed"),
        ("lost", "failed"),
        ("deleting", "deleting"),
        ("deleted", "deleted"),
    ],
)
def test_the_order_status_follows_the_instance(instance_status, order_status):
    assert order_status_for(Instance(status=instance_status)) == order_status
