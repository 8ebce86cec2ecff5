"""VMs on hosts that the shop does not (or no longer) keep there: which host may hold a copy of
an instance, whether it was already told to delete it, and what to do with a vm-id that is no
instance's (issue 20). Used by host_events.py, under its locks.
"""

from __future__ import annotations

import logging

from orders.core.provisioning import DELETE_VM, enqueue
from orders.models import Instance, OutboxMessage
from vmbackend.protocol import messages, topology
from vmbackend.protocol.messages import Event

log = logging.getLogger(__name__)

# The other host's copy is gone already: it failed (the host cleaned up) or was deleted.
COPY_GONE = frozenset({messages.INSTANCE_FAILED, messages.INSTANCE_DELETED})


def could_have_copy(instance: Instance, host_id: str) -> bool:
    """Whether a create-vm of the instance's current vm-id could have reached `host_id`: one
    sent to the shared queue (any host may take it: the duplicates below) or placed on that
    host. Any other host naming the instance is not a duplicate but an impostor."""
    keys = (messages.CREATE_VM, topology.host_key(host_id))
    bodies = instance.outbox_messages.filter(routing_key__in=keys).values_list("body", flat=True)
    return any(
        body.get("command") == messages.CREATE_VM
        and (body.get("options") or {}).get("vm-id") == instance.vm_id
        for body in bodies
    )


def deletion_sent(instance: Instance, host_id: str) -> bool:
    """Whether this host was already asked to delete its copy of the instance's current vm-id."""
    bodies = instance.outbox_messages.filter(routing_key=topology.host_key(host_id)).values_list(
        "body", flat=True
    )
    return any((body.get("options") or {}).get("vm-id") == instance.vm_id for body in bodies)


def unknown_vm(event: Event) -> str:
    """An event about a VM the shop does not own (a superseded vm-id re-sent by staff, a copy
    left behind): its host, the validated sender and no other, is told to delete it, once per
    unsent delete-vm. A gone copy (failed, deleted) needs nothing."""
    if event.type in COPY_GONE or event.instance_id is None:
        return "unknown_instance"
    vm_id, key = str(event.instance_id), topology.host_key(event.host_id)
    pending = OutboxMessage.objects.filter(
        routing_key=key, sent_at__isnull=True, body__command=DELETE_VM
    ).values_list("body", flat=True)
    if not any((body.get("options") or {}).get("vm-id") == vm_id for body in pending):
        enqueue(routing_key=key, body=messages.delete_vm_body(vm_id=vm_id))
        log.warning(
            "event=unknown_vm_deleted instance_id=%s host_id=%s type=%s",
            vm_id,
            event.host_id,
            event.type,
        )
    return "unknown_vm_deleted"
