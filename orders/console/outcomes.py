"""The host's answer to a console command, and what a command's end does (orders/console/).

`apply_outcome` applies instance.command_done / instance.command_failed in the event worker's
transaction; a command that fails after Stripe's price changed has its price changed back
(`revert_billing`, after the commit). `after_ready` records what runs once a server is ready.
The lowest module of the console: requests (commands.py) and the page (page.py) use it.
"""

from __future__ import annotations

import logging
import uuid

from django.db import transaction
from django.utils import timezone

from orders.billing.checkout import CheckoutError, change_subscription_price
from orders.core import activity
from orders.models import Activity, ConsoleCommand, Instance, Order
from store.models import Plan
from vmbackend.protocol import messages
from vmbackend.protocol.messages import Event

log = logging.getLogger(__name__)

Kind = ConsoleCommand.Kind
Status = ConsoleCommand.Status
# instance.command_done / instance.command_failed (the contract's names)
OUTCOME_EVENTS = frozenset({messages.INSTANCE_COMMAND_DONE, messages.INSTANCE_COMMAND_FAILED})
# The customer's words for each command in the timeline and on the page.
WHAT = {
    Kind.RESTART: "Restart",
    Kind.ROTATE_PASSWORD: "Password change",
    Kind.CHANGE_PLAN: "Plan change",
}


# The reason of a command its host did not answer in time. Its new password is kept: if the
# host does answer later (command_done), that password is what the VM has.
TIMED_OUT = "no answer from the server's host"


# The price may differ from the plan's: a failure reverts it.
_BILLED = frozenset({ConsoleCommand.Billing.CHANGED, ConsoleCommand.Billing.PENDING})


def pending_command(instance: Instance) -> ConsoleCommand | None:
    return instance.commands.filter(status=Status.SENT).first()


def revert_price(order: Order, plan: Plan, request_id: uuid.UUID, *, late: bool = False) -> bool:
    """Back to `plan`'s price. `late`: a change that landed after its revert needs its own key
    (Stripe would answer the first revert's key from its cache without changing anything)."""
    key = f"plan-revert-{'late-' if late else ''}{request_id}"
    try:
        change_subscription_price(order=order, price_id=plan.stripe_price_id, idempotency_key=key)
    except CheckoutError:
        log.error(
            "event=plan_price_revert_failed order_id=%s request_id=%s", order.public_id, request_id
        )
        return False
    return True


def revert_billing(command_pk: int) -> None:
    """After a failed resize committed: the subscription goes back to the old price. A revert
    Stripe refuses stays `revert_failed` (staff see it in the admin); nothing here raises."""
    command = ConsoleCommand.objects.select_related("instance__order", "from_plan").get(
        pk=command_pk
    )
    if command.billing not in _BILLED or command.from_plan is None:
        return
    ok = revert_price(command.instance.order, command.from_plan, command.request_id)
    outcome = ConsoleCommand.Billing.REVERTED if ok else ConsoleCommand.Billing.REVERT_FAILED
    ConsoleCommand.objects.filter(pk=command.pk, billing__in=_BILLED).update(billing=outcome)


def apply_outcome(order: Order, instance: Instance, event: Event) -> str:
    """instance.command_done / command_failed, in the event worker's transaction (both rows
    locked, the event new by seq). A repeated outcome (the host re-emits it for a repeated
    request) finds the command finished and changes nothing."""
    command = (
        ConsoleCommand.objects.select_for_update()
        .filter(instance=instance, request_id=event.request_id)
        .first()
        if event.request_id is not None
        else None
    )
    if command is None:
        log.warning(
            "event=console_outcome_unknown order_id=%s instance_id=%s request_id=%s",
            order.public_id,
            instance.public_id,
            event.request_id,
        )
        return "unknown_command"
    done = event.type == messages.INSTANCE_COMMAND_DONE
    if done and command.kind == Kind.CHANGE_PLAN and event.memory_mb:
        # What the VM has now, even for a command we had given up on (it is the VM's truth).
        set_fields(instance, memory_mb=event.memory_mb, vcpus=event.vcpus, disk_gb=event.disk_gb)
    late = done and command.status == Status.FAILED and command.reason == TIMED_OUT
    if command.status != Status.SENT and not late:
        return f"already_{command.status}"
    if late and command.billing == ConsoleCommand.Billing.REVERTED:
        # The price went back when we gave up, and now the VM has the new size after all.
        log.error(
            "event=plan_billing_mismatch order_id=%s request_id=%s: staff must set the price",
            order.public_id,
            command.request_id,
        )
    if done:
        _done(order, instance, command)
    else:
        fail(order, instance, command, event.reason or "the host refused it")
    return "applied"


def set_fields(instance: Instance, **fields: object) -> None:
    Instance.objects.filter(pk=instance.pk).update(**fields, updated_at=timezone.now())
    for name, value in fields.items():
        setattr(instance, name, value)


def _done(order: Order, instance: Instance, command: ConsoleCommand) -> None:
    now = timezone.now()
    if command.kind == Kind.ROTATE_PASSWORD:
        set_fields(instance, admin_password_encrypted=command.new_password_encrypted)
        command.move_to(Status.DONE, new_password_encrypted="", finished_at=now)
        activity.record(
            order=order,
            kind=Activity.Kind.PASSWORD_ROTATED,
            message="Admin password changed; the old one no longer works.",
        )
    elif command.kind == Kind.CHANGE_PLAN and command.to_plan is not None:
        old, new = command.from_plan, command.to_plan
        Order.objects.filter(pk=order.pk).update(plan=new, updated_at=now)
        order.plan = new
        command.move_to(Status.DONE, finished_at=now)
        activity.record(
            order=order,
            kind=Activity.Kind.PLAN_CHANGED,
            message=f"Plan changed from {activity.plan_label(old)} to {activity.plan_label(new)}.",
        )
    else:
        command.move_to(Status.DONE, finished_at=now)
        activity.record(
            order=order, kind=Activity.Kind.RESTARTED, message="Your server was restarted."
        )
    log.info(
        "event=console_command_done order_id=%s instance_id=%s command=%s request_id=%s",
        order.public_id,
        instance.public_id,
        command.kind,
        command.request_id,
    )


def fail(order: Order, instance: Instance, command: ConsoleCommand, reason: str) -> None:
    secret = {} if reason == TIMED_OUT else {"new_password_encrypted": ""}
    command.move_to(Status.FAILED, reason=reason[:300], finished_at=timezone.now(), **secret)
    what = WHAT[Kind(command.kind)]
    kept = {
        Kind.ROTATE_PASSWORD: " Your password is unchanged.",
        Kind.CHANGE_PLAN: " Your plan is unchanged.",
    }.get(Kind(command.kind), "")
    said = command.reason_for_customer  # the timeline is the customer's: no host internals
    activity.record(
        order=order, kind=Activity.Kind.ACTION_FAILED, message=f"{what} failed: {said}.{kept}"
    )
    if command.billing in _BILLED:  # a pending one may have changed at Stripe: revert it too
        transaction.on_commit(lambda: revert_billing(command.pk))
    log.warning(
        "event=console_command_failed order_id=%s instance_id=%s command=%s request_id=%s reason=%r",
        order.public_id,
        instance.public_id,
        command.kind,
        command.request_id,
        reason,
    )


def after_ready(order: Order, instance: Instance, event: Event) -> None:
    """instance.ready was applied: record what runs (the contract's `runtime`) and since when;
    a restart the owner asked for is done once its server is ready again."""
    fields: dict[str, object] = {"runtime_at": activity.event_time(event)}
    for name, value in (
        ("rabbitmq_version", event.rabbitmq_version),
        ("erlang_version", event.erlang_version),
        ("node_name", event.node),
    ):
        if value:
            fields[name] = value
    set_fields(instance, **fields)
    pending = pending_command(instance)
    if pending is not None and pending.kind == Kind.RESTART:
        _done(order, instance, pending)
