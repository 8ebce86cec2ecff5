"""Asking hosts for VMs and taking them away: the services between an Order and the outbox.

Nothing here talks to RabbitMQ: each function writes OutboxMessage rows in the caller's
transaction, and the relay (orders/outbox.py) publishes them. So a paid order and its create-vm
request are committed together or not at all, and a broker outage only delays the VM.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orders import broker
from orders.models import Instance, Order, OutboxMessage

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1


class ProvisioningError(Exception):
    """A staff or customer action that does not fit the order's current state."""


def enqueue(
    *,
    routing_key: str,
    body: dict[str, Any],
    instance: Instance | None = None,
    exchange: str = broker.COMMANDS_EXCHANGE,
) -> OutboxMessage:
    """Record a command to publish; commits (or rolls back) with the caller's transaction."""
    return OutboxMessage.objects.create(
        exchange=exchange, routing_key=routing_key, body=body, instance=instance
    )


def create_vm_body(*, instance: Instance) -> dict[str, Any]:
    """The create-vm command of docs/protocol.md for this instance (no reply_to: events tell)."""
    plan = instance.order.plan
    return {
        "version": PROTOCOL_VERSION,
        "command": "create-vm",
        "options": {
            "image": settings.INSTANCE_IMAGE or plan.image,
            "vm-id": str(instance.public_id),
            "memory-mb": plan.memory_mb,
            "vcpus": plan.vcpus,
            "disk-gb": plan.disk_gb,
            "admin": {"username": instance.admin_username, "password": instance.admin_password},
            "limits": {"max-connections": plan.max_connections, "max-queues": plan.max_queues},
        },
    }


def delete_vm_body(*, vm_id: str) -> dict[str, Any]:
    return {"version": PROTOCOL_VERSION, "command": "delete-vm", "options": {"vm-id": vm_id}}


def _new_admin_username() -> str:
    return f"warren-{secrets.token_hex(3)}"


def _new_admin_password() -> str:
    return secrets.token_urlsafe(24)  # 32 url-safe characters


def request_provisioning(
    *, order: Order, paid_at: Any = None, **stripe_ids: str
) -> Instance | None:
    """Mark a pending order paid, create its Instance with fresh credentials, queue create-vm.

    Call inside transaction.atomic() with the order row locked (select_for_update): the payment,
    the instance and the outbox row commit together. Returns None when the order was not
    pending_payment any more (another delivery got there first): nothing changes then.
    """
    if order.status != Order.Status.PENDING_PAYMENT:
        return None
    fields: dict[str, Any] = {"paid_at": paid_at or timezone.now()}
    fields.update({k: v for k, v in stripe_ids.items() if v})
    if not order.move_to(Order.Status.PAID, **fields):
        return None
    # Order.instance is one-to-one: even a second writer that slipped past the status check
    # could not create a second instance (IntegrityError rolls its whole transaction back).
    instance = Instance.objects.create(
        order=order,
        admin_username=_new_admin_username(),
        admin_password=_new_admin_password(),
    )
    enqueue(routing_key="create-vm", body=create_vm_body(instance=instance), instance=instance)
    log.info(
        "event=provisioning_requested order_id=%s instance_id=%s plan=%s",
        order.public_id,
        instance.public_id,
        order.plan.slug,
    )
    return instance


def request_deletion(*, order: Order, instance: Instance) -> None:
    """Queue delete-vm and move both rows to deleting. Caller holds the order lock."""
    if instance.status != Instance.Status.DELETING:
        instance.move_to(Instance.Status.DELETING)
    if order.status != Order.Status.DELETING:
        order.move_to(Order.Status.DELETING)
    enqueue(routing_key="delete-vm", body=delete_vm_body(vm_id=instance.vm_id), instance=instance)
    log.info(
        "event=deletion_requested order_id=%s instance_id=%s",
        order.public_id,
        instance.public_id,
    )


def resend_deletion(*, instance: Instance) -> None:
    """delete-vm again for an instance already deleting: a host has just announced it (the first
    delete-vm was broadcast before any host knew the vm-id, so nobody acted on it)."""
    enqueue(routing_key="delete-vm", body=delete_vm_body(vm_id=instance.vm_id), instance=instance)
    log.info(
        "event=deletion_resent order_id=%s instance_id=%s",
        instance.order.public_id,
        instance.public_id,
    )


def cancel_order_locked(*, order: Order, reason: str) -> bool:
    """Cancel inside the caller's transaction with the order row locked. True if it changed.

    - awaiting payment: cancelled, nothing to delete;
    - failed with its VM cleaned up by the host: cancelled;
    - anything with a VM that may exist (requested, booting, ready, lost): delete-vm, deleting;
    - already cancelled / deleting / deleted: no change (cancelling is idempotent).
    """
    if not order.can_cancel:
        return False
    now = timezone.now()
    instance = Instance.objects.select_for_update().filter(order=order).first()
    if instance is None or instance.status in (Instance.Status.FAILED, Instance.Status.DELETED):
        if order.status in (Order.Status.PENDING_PAYMENT, Order.Status.FAILED):
            changed = order.move_to(Order.Status.CANCELLED, cancelled_at=now, cancel_reason=reason)
        else:
            # A paid order whose instance is gone already (should not happen): record it.
            changed = order.move_to(Order.Status.DELETING, cancelled_at=now, cancel_reason=reason)
            if changed:
                order.move_to(Order.Status.DELETED)
    else:
        Order.objects.filter(pk=order.pk).update(cancelled_at=now, cancel_reason=reason)
        order.cancelled_at, order.cancel_reason = now, reason
        request_deletion(order=order, instance=instance)
        changed = True
    if changed:
        log.info(
            "event=order_cancelled order_id=%s status=%s reason=%s",
            order.public_id,
            order.status,
            reason,
        )
    return changed


def cancel_order(*, order: Order, reason: str, cancel_subscription: bool = True) -> Order:
    """Cancel an order (customer button, staff action). Returns the order as it now is.

    With Stripe configured, the subscription is cancelled at Stripe first (money side first): if
    that call fails nothing changes here and the error propagates to the caller. Stripe then
    sends customer.subscription.deleted, which finds the order already cancelled.
    """
    if cancel_subscription and settings.STRIPE_SECRET_KEY and order.stripe_subscription_id:
        from orders.checkout import cancel_stripe_subscription

        cancel_stripe_subscription(order=order)
    with transaction.atomic():
        # Race: a webhook or the event consumer may move this order concurrently; the row lock
        # serialises us with them.
        locked = Order.objects.select_for_update().get(pk=order.pk)
        cancel_order_locked(order=locked, reason=reason)
    return locked


def retry_provisioning(*, instance: Instance) -> Instance:
    """Staff action for a failed or lost instance: ask for a new VM under a FRESH vm-id.

    A fresh vm-id because vm-id is the daemons' idempotency key: a create-vm for a vm-id a host
    still remembers as failed would only re-announce the failure. Events about the old vm-id are
    then unknown and ignored. A lost VM may still have a disk on its host, so it also gets a
    delete-vm under its old vm-id. The credentials stay (the customer never had a working VM).
    """
    with transaction.atomic():
        # Race: the event consumer may apply an event to this instance at the same time; lock the
        # order first, then the instance (the order used everywhere else), then re-check.
        order = Order.objects.select_for_update().get(pk=instance.order_id)
        locked = Instance.objects.select_for_update().get(pk=instance.pk)
        if not locked.can_retry or order.status != Order.Status.FAILED:
            raise ProvisioningError(
                f"instance {locked.public_id} is {locked.status}, order is {order.status}:"
                " only a failed instance of a failed order can be retried"
            )
        old_vm_id = locked.vm_id
        if locked.status == Instance.Status.LOST:
            enqueue(routing_key="delete-vm", body=delete_vm_body(vm_id=old_vm_id), instance=locked)
        locked.move_to(
            Instance.Status.REQUESTED,
            public_id=uuid.uuid4(),
            host_id="",
            stage="",
            management_url="",
            amqp_url="",
            failure_reason="",
            last_event_seq=0,
            ready_at=None,
            attempts=locked.attempts + 1,
        )
        order.move_to(Order.Status.PAID)
        locked.order = order
        enqueue(routing_key="create-vm", body=create_vm_body(instance=locked), instance=locked)
        log.info(
            "event=provisioning_retried order_id=%s instance_id=%s old_instance_id=%s attempt=%s",
            order.public_id,
            locked.public_id,
            old_vm_id,
            locked.attempts,
        )
    return locked


def forget_credentials(*, instance: Instance) -> None:
    """The VM is gone: drop its admin password from the instance and from the sent create-vm rows,
    so the secret does not outlive the server it opened."""
    Instance.objects.filter(pk=instance.pk).update(admin_password="")
    instance.admin_password = ""
    for row in instance.outbox_messages.filter(routing_key="create-vm", sent_at__isnull=False):
        admin = (row.body.get("options") or {}).get("admin")
        if isinstance(admin, dict) and admin.get("password"):
            admin["password"] = ""
            row.save(update_fields=["body"])


def order_status_for(instance: Instance) -> str:
    """The order status that matches where the instance is (used when past_due is paid)."""
    return {
        Instance.Status.REQUESTED: Order.Status.PAID,
        Instance.Status.BOOTING: Order.Status.PROVISIONING,
        Instance.Status.READY: Order.Status.READY,
        Instance.Status.FAILED: Order.Status.FAILED,
        Instance.Status.LOST: Order.Status.FAILED,
        Instance.Status.DELETING: Order.Status.DELETING,
        Instance.Status.DELETED: Order.Status.DELETED,
    }[Instance.Status(instance.status)]
