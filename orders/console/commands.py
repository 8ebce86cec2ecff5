"""The owner's console on the order page (issue 11): restart, rotate the password, change plan.

Each action is one ConsoleCommand row plus its command in the outbox (routing key host.<host_id>,
the VM's host), written in one transaction with the order and instance rows locked; the host
answers with instance.command_done / instance.command_failed, which `apply_outcome` applies in the
event worker's transaction. The form's hidden request_id is the protocol's request-id: a repeated
POST of the same form finds its command and does nothing again, and the host does the same with a
repeated message. One command per server at a time (a partial unique index); one the host never
answers counts as failed after settings.CONSOLE_COMMAND_TIMEOUT, so the owner is never stuck.

Passwords: the new one is generated here, stored encrypted on the command, and put into the
set-admin-password body only by the relay at publish time (provisioning.body_to_publish). It
becomes the instance's password when the host confirms; a refusal keeps the old one.

Money (plan changes, docs/orders.md "Changing plan"): with Stripe keys the subscription's price
changes first, with proration (nothing is sent if Stripe refuses); if the host then fails the
resize, the price is changed back (again prorated, so the customer pays for what ran), and a
revert Stripe refuses is left as `billing=revert_failed` for staff. Offline there is no money.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orders.billing.checkout import CheckoutError, change_subscription_price
from orders.core import activity
from orders.core.provisioning import enqueue
from orders.lib import encryption
from orders.models import Activity, ConsoleCommand, Instance, Order
from store.models import Plan
from vmbackend import messages, topology
from vmbackend.messages import Event

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


class ConsoleError(Exception):
    """The action is not possible now; the message says why, for the owner. Nothing changed."""


@dataclass(frozen=True)
class Started:
    command: ConsoleCommand
    new: bool  # False: this request id had been used already (a repeated submit): nothing sent


@dataclass(frozen=True)
class PlanChoice:
    plan: Plan
    current: bool
    reason: str  # why it cannot be chosen ("" when it can)

    @property
    def allowed(self) -> bool:
        return not self.current and not self.reason


def stripe_on() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def plan_choices(order: Order, instance: Instance) -> list[PlanChoice]:
    """The active plans of the order's RabbitMQ version, each with why it cannot be chosen: a
    disk smaller than the server's own (disks only grow), or no Stripe price to bill it."""
    disk = instance.disk_gb or order.plan.disk_gb
    choices = []
    plans = Plan.objects.filter(is_active=True, rabbitmq_version=order.plan.rabbitmq_version)
    for plan in plans.order_by("monthly_price_cents", "memory_mb"):
        reason = ""
        if plan.disk_gb < disk:
            reason = (
                f"Its disk ({plan.disk_gb} GB) is smaller than your server's ({disk} GB);"
                " a disk can only grow."
            )
        elif stripe_on() and not plan.stripe_price_id:
            reason = "Not available for a change right now."
        choices.append(PlanChoice(plan=plan, current=plan.pk == order.plan_id, reason=reason))
    return choices


def pending_command(instance: Instance) -> ConsoleCommand | None:
    return instance.commands.filter(status=Status.SENT).first()


def unseen_password(instance: Instance) -> ConsoleCommand | None:
    """The finished password change whose new password the owner has not been shown yet."""
    return (
        instance.commands.filter(
            kind=Kind.ROTATE_PASSWORD, status=Status.DONE, password_shown_at__isnull=True
        )
        .order_by("-finished_at")
        .first()
    )


def mark_password_shown(*, instance: Instance) -> None:
    """The owner has seen the current password: the one-time notice is over."""
    instance.commands.filter(
        kind=Kind.ROTATE_PASSWORD, status=Status.DONE, password_shown_at__isnull=True
    ).update(password_shown_at=timezone.now())


def last_failure(instance: Instance) -> ConsoleCommand | None:
    """The newest command, if it failed (shown with its reason until the next one)."""
    newest = instance.commands.order_by("-created_at").first()
    return newest if newest is not None and newest.status == Status.FAILED else None


# -- starting a command --------------------------------------------------------------------------


def _lock(order: Order) -> tuple[Order, Instance]:
    """The order and its instance, locked (order first, like every writer of both)."""
    locked = Order.objects.select_for_update().select_related("plan").get(pk=order.pk)
    instance = Instance.objects.select_for_update().filter(order=locked).first()
    if instance is None:
        raise ConsoleError("Your server does not exist yet.")
    instance.order = locked
    return locked, instance


def _used(instance: Instance, request_id: uuid.UUID) -> ConsoleCommand | None:
    """The command this request id started already; ConsoleError for another server's."""
    command = ConsoleCommand.objects.filter(request_id=request_id).first()
    if command is not None and command.instance_id != instance.pk:
        raise ConsoleError("This form was already used. Please start again from the order page.")
    return command


def _check_ready(order: Order, instance: Instance, *, statuses: frozenset[str]) -> None:
    if order.status not in statuses or instance.status != Instance.Status.READY:
        raise ConsoleError("Your server must be running for this.")
    if instance.is_restarting:
        raise ConsoleError("Your server is being restarted by its host; try again once it is back.")
    if not instance.host_id:
        raise ConsoleError("Your server's host is not known yet; try again in a moment.")


def _check_nothing_pending(instance: Instance) -> None:
    """One command at a time; a command the host never answered gives way after the timeout."""
    pending = pending_command(instance)
    if pending is None:
        return
    timeout = timedelta(seconds=settings.CONSOLE_COMMAND_TIMEOUT)
    if pending.created_at > timezone.now() - timeout:
        raise ConsoleError(f"{WHAT[Kind(pending.kind)]} in progress; please wait for it to finish.")
    _fail(instance.order, instance, pending, TIMED_OUT)


def _send(order: Order, instance: Instance, command: ConsoleCommand, body: dict) -> None:
    enqueue(routing_key=topology.host_key(instance.host_id), body=body, instance=instance)
    log.info(
        "event=console_command_sent order_id=%s instance_id=%s host_id=%s command=%s request_id=%s",
        order.public_id,
        instance.public_id,
        instance.host_id,
        command.kind,
        command.request_id,
    )


def request_restart(*, order: Order, request_id: uuid.UUID) -> Started:
    with transaction.atomic():
        order, instance = _lock(order)
        if used := _used(instance, request_id):
            return Started(used, new=False)
        _check_ready(order, instance, statuses=Order.SERVING)
        _check_nothing_pending(instance)
        command = ConsoleCommand.objects.create(
            instance=instance, request_id=request_id, kind=Kind.RESTART
        )
        body = messages.restart_vm_body(vm_id=instance.vm_id, request_id=request_id)
        _send(order, instance, command, body)
        activity.record(
            order=order, kind=Activity.Kind.RESTART_REQUESTED, message="You asked for a restart."
        )
    return Started(command, new=True)


def request_password_rotation(*, order: Order, request_id: uuid.UUID) -> Started:
    with transaction.atomic():
        order, instance = _lock(order)
        if used := _used(instance, request_id):
            return Started(used, new=False)
        _check_ready(order, instance, statuses=Order.SERVING)
        _check_nothing_pending(instance)
        _username, password = messages.generate_admin()
        command = ConsoleCommand.objects.create(
            instance=instance,
            request_id=request_id,
            kind=Kind.ROTATE_PASSWORD,
            new_password_encrypted=encryption.encrypt(password),
        )
        # The outbox row gets no password (enqueue blanks it; the relay fills it in).
        body = messages.set_admin_password_body(
            vm_id=instance.vm_id,
            request_id=request_id,
            username=instance.admin_username,
            password=password,
        )
        _send(order, instance, command, body)
        activity.record(
            order=order,
            kind=Activity.Kind.ACTION_REQUESTED,
            message="You asked for a new admin password.",
        )
    return Started(command, new=True)


def request_plan_change(*, order: Order, request_id: uuid.UUID, plan: Plan) -> Started:
    """Check, bill (with Stripe: before anything is sent), then send resize-vm."""
    with transaction.atomic():
        locked, instance = _lock(order)
        if used := _used(instance, request_id):
            return Started(used, new=False)
        _check_plan_change(locked, instance, plan)
    from_plan = locked.plan
    billed = stripe_on()
    if billed:
        try:  # outside the transaction: no row stays locked while Stripe answers
            change_subscription_price(
                order=locked, price_id=plan.stripe_price_id, idempotency_key=f"plan-{request_id}"
            )
        except CheckoutError as exc:
            raise ConsoleError(f"{exc}; your plan is unchanged.") from exc
    try:
        with transaction.atomic():
            locked, instance = _lock(order)
            if used := _used(instance, request_id):
                return Started(used, new=False)
            _check_plan_change(locked, instance, plan)
            command = ConsoleCommand.objects.create(
                instance=instance,
                request_id=request_id,
                kind=Kind.CHANGE_PLAN,
                from_plan=from_plan,
                to_plan=plan,
                billing=ConsoleCommand.Billing.CHANGED if billed else "",
            )
            body = messages.resize_vm_body(
                vm_id=instance.vm_id,
                request_id=request_id,
                memory_mb=plan.memory_mb,
                vcpus=plan.vcpus,
                disk_gb=plan.disk_gb,
            )
            _send(locked, instance, command, body)
            activity.record(
                order=locked,
                kind=Activity.Kind.ACTION_REQUESTED,
                message=f"You asked to change to {activity.plan_label(plan)}.",
            )
    except ConsoleError:
        if billed:  # something changed between the two transactions: undo the price
            _revert_price(locked, from_plan, request_id)
        raise
    return Started(command, new=True)


_SLUG = re.compile(r"^[-a-zA-Z0-9_]{1,50}$")  # Plan.slug (a NUL or a long text never reaches SQL)


def chosen_plan(slug: str) -> Plan:
    """The plan a form names by slug; ConsoleError when it names none."""
    plan = Plan.objects.filter(slug=slug).first() if _SLUG.match(slug) else None
    if plan is None:
        raise ConsoleError("Please choose a plan.")
    return plan


def _check_plan_change(order: Order, instance: Instance, plan: Plan) -> None:
    _check_ready(order, instance, statuses=frozenset({Order.Status.READY}))
    _check_nothing_pending(instance)
    choice = next((c for c in plan_choices(order, instance) if c.plan.pk == plan.pk), None)
    if choice is None:
        raise ConsoleError("That plan is not available for this server.")
    if choice.current:
        raise ConsoleError("Your server is on that plan already.")
    if choice.reason:
        raise ConsoleError(choice.reason)


def _revert_price(order: Order, plan: Plan, request_id: uuid.UUID) -> bool:
    try:
        change_subscription_price(
            order=order, price_id=plan.stripe_price_id, idempotency_key=f"plan-revert-{request_id}"
        )
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
    if command.billing != ConsoleCommand.Billing.CHANGED or command.from_plan is None:
        return
    ok = _revert_price(command.instance.order, command.from_plan, command.request_id)
    outcome = ConsoleCommand.Billing.REVERTED if ok else ConsoleCommand.Billing.REVERT_FAILED
    ConsoleCommand.objects.filter(pk=command.pk, billing=ConsoleCommand.Billing.CHANGED).update(
        billing=outcome
    )


# -- the host's answer ---------------------------------------------------------------------------


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
        _set(instance, memory_mb=event.memory_mb, vcpus=event.vcpus, disk_gb=event.disk_gb)
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
        _fail(order, instance, command, event.reason or "the host refused it")
    return "applied"


def _set(instance: Instance, **fields: object) -> None:
    Instance.objects.filter(pk=instance.pk).update(**fields, updated_at=timezone.now())
    for name, value in fields.items():
        setattr(instance, name, value)


def _done(order: Order, instance: Instance, command: ConsoleCommand) -> None:
    now = timezone.now()
    if command.kind == Kind.ROTATE_PASSWORD:
        _set(instance, admin_password_encrypted=command.new_password_encrypted)
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


def _fail(order: Order, instance: Instance, command: ConsoleCommand, reason: str) -> None:
    secret = {} if reason == TIMED_OUT else {"new_password_encrypted": ""}
    command.move_to(Status.FAILED, reason=reason[:300], finished_at=timezone.now(), **secret)
    what = WHAT[Kind(command.kind)]
    kept = {
        Kind.ROTATE_PASSWORD: " Your password is unchanged.",
        Kind.CHANGE_PLAN: " Your plan is unchanged.",
    }.get(Kind(command.kind), "")
    activity.record(
        order=order, kind=Activity.Kind.ACTION_FAILED, message=f"{what} failed: {reason}.{kept}"
    )
    if command.billing == ConsoleCommand.Billing.CHANGED:
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
    _set(instance, **fields)
    pending = pending_command(instance)
    if pending is not None and pending.kind == Kind.RESTART:
        _done(order, instance, pending)


# -- what the order page shows ---------------------------------------------------------------------

PENDING_LABEL = {
    Kind.RESTART: "Restarting your server…",
    Kind.ROTATE_PASSWORD: "Setting your new password…",
    Kind.CHANGE_PLAN: "Changing your plan…",
}
CONFIRM = {
    "restart": (
        "Restart your server?",
        "RabbitMQ stops cleanly and starts again (forced if it does not stop in time). Clients"
        " are disconnected for a moment; durable queues and persistent messages stay.",
        "Restart now",
    ),
    "password": (
        "Change the admin password?",
        "A new random password replaces the current one at once: the old one stops working and"
        " connections that used it are closed. The new one is shown on the order page.",
        "Change the password",
    ),
    "plan": (
        "Change plan",
        "Memory and CPUs change with a restart of your server; the disk only grows. Your data"
        " stays.",
        "Change plan",
    ),
}


def blocked_reason(order: Order, instance: Instance, action: str) -> str:
    """Why `action` cannot be started now ("" when it can): the same checks as the services."""
    statuses = frozenset({Order.Status.READY}) if action == "plan" else Order.SERVING
    try:
        _check_ready(order, instance, statuses=statuses)
        pending = pending_command(instance)
        timeout = timedelta(seconds=settings.CONSOLE_COMMAND_TIMEOUT)
        if pending is not None and pending.created_at > timezone.now() - timeout:
            raise ConsoleError(
                f"{WHAT[Kind(pending.kind)]} in progress; please wait for it to finish."
            )
    except ConsoleError as exc:
        return str(exc)
    return ""


def confirm_context(order: Order, instance: Instance, action: str) -> dict[str, object]:
    """The confirmation page of `action`, with a fresh request id (the form's one-time token)."""
    title, text, button = CONFIRM[action]
    return {
        "order": order,
        "instance": instance,
        "action": action,
        "title": title,
        "text": text,
        "button": button,
        "request_id": uuid.uuid4(),
        "blocked": blocked_reason(order, instance, action),
        "choices": plan_choices(order, instance) if action == "plan" else [],
    }


def page_context(order: Order, instance: Instance | None, *, serving: bool) -> dict[str, object]:
    """The console, runtime and activity parts of the order page, and a version string that
    changes whenever they do (the page's poll compares it)."""
    lines = activity.timeline(order)
    newest = lines[0].pk if lines else 0
    if instance is None:
        return {
            "activities": lines,
            "console": None,
            "console_busy": False,
            "console_version": f":{newest}",
        }
    pending = pending_command(instance)
    new_password = serving and unseen_password(instance) is not None
    last_restart = instance.last_restart_at
    restarted = instance.commands.filter(kind=Kind.RESTART, status=Status.DONE).first()
    if restarted is not None and restarted.finished_at is not None:
        last_restart = max(filter(None, (last_restart, restarted.finished_at)))
    return {
        "activities": lines,
        "console": {
            "open": serving,
            "pending": pending,
            "pending_label": PENDING_LABEL[Kind(pending.kind)] if pending else "",
            "failure": last_failure(instance),
            "new_password": new_password,
            "can_change_plan": order.status == Order.Status.READY,
            "billing": stripe_on() and bool(order.stripe_customer_id),
            "last_restart": last_restart,
        },
        "console_busy": pending is not None,
        "console_version": f":{pending.kind if pending else ''}:{newest}:{new_password}",
    }
