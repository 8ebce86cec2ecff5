"""Asking hosts for VMs and taking them away: the services between an Order and the outbox.

Nothing here talks to RabbitMQ: each function writes OutboxMessage rows in the caller's
transaction, and the relay (orders/messaging/outbox.py) publishes them. So a paid order and its
create-vm request are committed together or not at all, and a broker outage only delays the VM.
"""

from __future__ import annotations

import copy
import logging
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orders.core import activity
from orders.lib import wakeup
from orders.models import ORDER_STATUS_FOR_INSTANCE, Activity, Instance, Order, OutboxMessage
from vmbackend.protocol import messages, topology

CREATE_VM = messages.CREATE_VM
DELETE_VM = "delete-vm"

log = logging.getLogger(__name__)


class ProvisioningError(Exception):
    """A staff or customer action that does not fit the order's current state."""


def enqueue(
    *,
    routing_key: str,
    body: dict[str, Any],
    instance: Instance | None = None,
    exchange: str = topology.COMMANDS_EXCHANGE,
) -> OutboxMessage:
    """Record a command to publish; commits (or rolls back) with the caller's transaction.

    A create-vm (and a console's set-admin-password) is stored without its admin password: the
    row would otherwise keep the secret in clear for as long as it exists. The relay fills it in
    from where it is encrypted at the moment it publishes (`body_to_publish`).
    """
    admin = (body.get("options") or {}).get("admin") if _carries_password(body) else None
    if isinstance(admin, dict) and admin.get("password"):
        body = copy.deepcopy(body)
        body["options"]["admin"]["password"] = ""
    row = OutboxMessage.objects.create(
        exchange=exchange, routing_key=routing_key, body=body, instance=instance
    )
    wakeup.notify(wakeup.OUTBOX)  # the relay publishes it at commit, not at its next poll
    return row


# Commands whose options.admin.password is never stored in the outbox (filled in at publish).
PASSWORD_COMMANDS = frozenset({CREATE_VM, messages.SET_ADMIN_PASSWORD})


def _carries_password(body: dict[str, Any]) -> bool:
    return body.get("command") in PASSWORD_COMMANDS


def body_to_publish(row: OutboxMessage) -> dict[str, Any]:
    """The body the relay puts on the wire: a create-vm gets its instance's password back, a
    set-admin-password the new password its console command holds (decrypted here, in memory,
    just for the publish)."""
    stored: dict[str, Any] = row.body
    admin = (stored.get("options") or {}).get("admin") if _carries_password(stored) else None
    instance = row.instance if row.instance_id is not None else None
    if not isinstance(admin, dict) or instance is None:
        return stored
    body = copy.deepcopy(stored)
    if stored.get("command") == messages.SET_ADMIN_PASSWORD:
        body["options"]["admin"]["password"] = password_to_send(
            instance=instance, request_id=str(stored["options"].get("request-id", ""))
        )
    else:
        body["options"]["admin"]["password"] = instance.admin_password
    return body


def provision_again(*, order: Order, instance: Instance, **fields: Any) -> None:
    """A new attempt for a paid order: the instance back to requested under a fresh vm-id, with
    everything the last attempt's host reported cleared (`fields` clears more), the order paid,
    and a create-vm queued. Both rows are locked by the caller, in its transaction."""
    instance.move_to(
        Instance.Status.REQUESTED,
        public_id=uuid.uuid4(),
        host_id="",
        stage="",
        management_url="",
        amqp_url="",
        failure_reason="",
        last_event_seq=0,
        ready_at=None,
        attempts=instance.attempts + 1,
        **fields,
    )
    order.move_to(Order.Status.PAID)
    instance.order = order
    enqueue(routing_key=CREATE_VM, body=create_vm_body(instance=instance), instance=instance)


def password_to_send(*, instance: Instance, request_id: str) -> str:
    """The password a set-admin-password carries when the relay publishes it: its command's new
    one while the host has not answered; after that the instance's (the same, once confirmed; a
    refused or given-up command makes the host set the current password again: no change)."""
    try:
        command = instance.commands.filter(request_id=uuid.UUID(request_id)).first()
    except ValueError:
        command = None
    if command is not None and command.new_password_encrypted:
        return command.new_password
    return instance.admin_password


def ca_certificate_pem() -> bytes | None:
    """The root CA certificate customers download (settings.CA_CERT), or None when none is
    configured or the file holds no certificate: only a public certificate is ever served."""
    path = settings.CA_CERT
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
        certs = x509.load_pem_x509_certificates(data)
    except (OSError, ValueError) as exc:
        log.error("event=ca_certificate_unreadable path=%s error=%s", path, exc)
        return None
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def create_vm_body(*, instance: Instance) -> dict[str, Any]:
    """The create-vm command of docs/protocol.md for this instance (built by the contract)."""
    plan = instance.order.plan
    return messages.create_vm_body(
        vm_id=instance.vm_id,
        image=settings.INSTANCE_IMAGE or plan.image,
        memory_mb=plan.memory_mb,
        vcpus=plan.vcpus,
        disk_gb=plan.disk_gb,
        admin_username=instance.admin_username,
        admin_password=instance.admin_password,
        limits={"max-connections": plan.max_connections, "max-queues": plan.max_queues},
        plain_ports=plan.plain_ports,
    )


def delete_vm(*, instance: Instance, vm_id: str, routing_key: str = DELETE_VM) -> OutboxMessage:
    """Queue a delete-vm for `vm_id` (broadcast to every host, or to one with host.<id>)."""
    return enqueue(
        routing_key=routing_key, body=messages.delete_vm_body(vm_id=vm_id), instance=instance
    )


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
    username, password = messages.generate_admin()  # warren-xxxxxx, 32 url-safe characters
    plan = order.plan
    instance = Instance(
        order=order,
        admin_username=username,
        # The VM's own size and version from now on (a plan's values may change later).
        memory_mb=plan.memory_mb,
        vcpus=plan.vcpus,
        disk_gb=plan.disk_gb,
        created_rabbitmq_version=plan.rabbitmq_version,
    )
    instance.admin_password = password  # encrypted on the way in (orders/lib/encryption.py)
    instance.save(force_insert=True)
    enqueue(routing_key=CREATE_VM, body=create_vm_body(instance=instance), instance=instance)
    activity.record(order=order, kind=Activity.Kind.PAID, message="Payment received.")
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
    delete_vm(instance=instance, vm_id=instance.vm_id)
    log.info(
        "event=deletion_requested order_id=%s instance_id=%s",
        order.public_id,
        instance.public_id,
    )


def resend_deletion(*, instance: Instance) -> None:
    """delete-vm again for an instance already deleting: a host has just announced it (the first
    delete-vm was broadcast before any host knew the vm-id, so nobody acted on it)."""
    delete_vm(instance=instance, vm_id=instance.vm_id)
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
    if instance is None or instance.status in Instance.WITHOUT_VM:
        if order.can_move_to(Order.Status.CANCELLED):  # awaiting payment, or failed
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
        said = reason.split(" (")[0]  # "Cancelled by staff (name)": the customer reads no name
        activity.record(
            order=order, kind=Activity.Kind.CANCELLED, message=f"Order cancelled: {said}."
        )
        log.info(
            "event=order_cancelled order_id=%s status=%s reason=%s",
            order.public_id,
            order.status,
            reason,
        )
    return changed


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
            delete_vm(instance=locked, vm_id=old_vm_id)
        provision_again(order=order, instance=locked)
        log.info(
            "event=provisioning_retried order_id=%s instance_id=%s old_instance_id=%s attempt=%s",
            order.public_id,
            locked.public_id,
            old_vm_id,
            locked.attempts,
        )
    return locked


def forget_credentials(*, instance: Instance) -> None:
    """The VM is gone: drop its admin password, so the secret does not outlive the server it
    opened. (Outbox rows never hold it: see `enqueue`.)"""
    Instance.objects.filter(pk=instance.pk).update(admin_password_encrypted="")
    instance.admin_password_encrypted = ""


def order_status_for(instance: Instance) -> str:
    """The order status that matches where the instance is (used when past_due is paid)."""
    return ORDER_STATUS_FOR_INSTANCE[instance.status]
