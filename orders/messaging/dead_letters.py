"""Reading the dead-letter queue `computing.dead.q` (topology.DEAD_QUEUE, fed by the fanout
exchange `computing.dlx`; docs/protocol.md, Rejected commands).

Hosts dead-letter the commands they refuse (header `x-warren-reject-reason`, and the host in
`x-warren-host-id`); the shop's event worker dead-letters the events it cannot apply. The event
worker reads this queue too (`EventConsumer.drain_dead_letters`, orders/messaging/consumer.py;
docs/orders.md says why there and not in a process of its own) and hands each message to
`handle_dead_letter`:

- a refused create-vm for an instance no host took: the instance and its order fail with the
  host's reason (staff fix the cause, then retry); for a cancelled one, the deletion is finished;
- everything else (a refused delete-vm, an event the shop refused, garbage): logged and kept.

Every message becomes a `DeadLetter` row (passwords masked), so nothing is lost silently; the
newest DEAD_LETTERS_KEPT rows are kept.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from django.db import transaction

from orders.core.provisioning import forget_credentials
from orders.models import DeadLetter, Instance, Order
from vmbackend.protocol import messages, topology

log = logging.getLogger(__name__)

DEAD_LETTERS_KEPT = 1000
MAX_BODY_CHARS = 8000
REJECTED_BY_SHOP = "shop"
HOST_HEADER = "x-warren-host-id"
ROUTING_KEY_HEADER = "x-warren-routing-key"
MASK = "********"
# A password in a body that is not JSON (cut off, or garbage around it): masked all the same.
_PASSWORD_IN_TEXT = re.compile(r'("password"\s*:\s*)"(?:[^"\\]|\\.)*"?')


def handle_dead_letter(
    *, body: bytes, headers: Mapping[str, Any] | None, routing_key: str, message_id: str = ""
) -> str:
    """Record one dead letter and act on it (one transaction). Returns what was done."""
    headers = headers or {}
    reason = _text(headers.get(topology.REJECT_HEADER), 1000) or "no reason given"
    rejected_by = _text(headers.get(HOST_HEADER), 100) or REJECTED_BY_SHOP
    routing_key = _text(headers.get(ROUTING_KEY_HEADER), 255) or _text(routing_key, 255)
    data = messages.peek(body)
    with transaction.atomic():
        instance, result = None, "recorded"
        if data is not None and data.get("command") == messages.CREATE_VM:
            instance, result = refused_create_vm(
                vm_id=_vm_id(data), rejected_by=rejected_by, reason=reason
            )
        DeadLetter.objects.create(
            rejected_by=rejected_by,
            routing_key=routing_key,
            message_id=_text(message_id, 100),
            reason=reason,
            body=_masked_text(body, data),
            instance=instance,
            result=result,
        )
        _prune()
    log.warning(
        "event=dead_letter rejected_by=%s routing_key=%s instance_id=%s result=%s reason=%r",
        rejected_by,
        routing_key or "-",
        instance.public_id if instance else "-",
        result,
        reason,
    )
    return result


def refused_create_vm(
    *, vm_id: uuid.UUID | None, rejected_by: str, reason: str
) -> tuple[Instance | None, str]:
    """A host refused our create-vm: the order cannot get its VM this way. Caller is atomic."""
    if vm_id is None:
        return None, "recorded"
    order_pk = Instance.objects.filter(public_id=vm_id).values_list("order_id", flat=True).first()
    if order_pk is None:
        return None, "unknown_instance"  # not ours, or replaced by a staff retry
    # Race: the event worker, webhooks and staff change the same rows: order first, then instance.
    order = Order.objects.select_for_update().get(pk=order_pk)
    instance = Instance.objects.select_for_update().get(order_id=order_pk)
    if instance.public_id != vm_id:
        return None, "unknown_instance"
    instance.order = order
    if instance.status == Instance.Status.REQUESTED:
        failure = f"host {rejected_by} refused the create-vm: {reason}"
        instance.move_to(Instance.Status.FAILED, failure_reason=failure)
        if order.status in Order.LIVE:
            order.move_to(Order.Status.FAILED)
        log.warning(
            "event=instance_failed order_id=%s instance_id=%s reason=%r",
            order.public_id,
            instance.public_id,
            failure,
        )
        return instance, "order_failed"
    if instance.status == Instance.Status.DELETING and not instance.host_id:
        # Cancelled before any host had it, and the create-vm was refused: no VM exists.
        instance.move_to(Instance.Status.DELETED)
        forget_credentials(instance=instance)
        if order.status == Order.Status.DELETING:
            order.move_to(Order.Status.DELETED)
        return instance, "deletion_finished"
    # A host took it after all (a duplicate copy was refused elsewhere), or it already ended.
    return instance, "ignored"


def _vm_id(data: dict[str, Any]) -> uuid.UUID | None:
    options = data.get("options")
    vm_id = options.get("vm-id") if isinstance(options, dict) else None
    try:
        return uuid.UUID(vm_id) if isinstance(vm_id, str) else None
    except ValueError:
        return None


def _text(value: Any, limit: int) -> str:
    """A header value as text a database takes (no NUL), bounded."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).replace("\x00", "\\x00")[:limit]


def masked(value: Any) -> Any:
    """`value` with every "password" entry replaced, at any depth."""
    if isinstance(value, dict):
        return {k: MASK if k == "password" else masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value


def _masked_text(body: bytes, data: dict[str, Any] | None) -> str:
    if data is not None:
        text = json.dumps(masked(data), sort_keys=True, ensure_ascii=False)
    else:
        raw = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else repr(body)
        text = _PASSWORD_IN_TEXT.sub(lambda m: f'{m.group(1)}"{MASK}"', raw)
    return _text(text, MAX_BODY_CHARS)


def _prune() -> None:
    """Keep the newest DEAD_LETTERS_KEPT rows: a flood of garbage must not fill the disk."""
    ids = DeadLetter.objects.order_by("-id").values_list("id", flat=True)
    first_dropped = list(ids[DEAD_LETTERS_KEPT : DEAD_LETTERS_KEPT + 1])
    if first_dropped:
        DeadLetter.objects.filter(id__lte=first_dropped[0]).delete()
