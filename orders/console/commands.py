"""The owner's console on the order page (issue 11): restart, rotate the password, change plan.

Here the requests (what the owner starts); the host's answer is orders/console/outcomes.py, what
the page shows orders/console/page.py.

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
from orders.console.outcomes import TIMED_OUT, WHAT, fail, pending_command, revert_price
from orders.core import activity
from orders.core.provisioning import enqueue
from orders.lib import encryption
from orders.models import Activity, ConsoleCommand, Instance, Order
from store.models import Plan
from vmbackend.protocol import messages, topology

log = logging.getLogger(__name__)

Kind = ConsoleCommand.Kind
Status = ConsoleCommand.Status


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


def check_ready(order: Order, instance: Instance, *, statuses: frozenset[str]) -> None:
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
    fail(instance.order, instance, pending, TIMED_OUT)


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
        check_ready(order, instance, statuses=Order.SERVING)
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
        check_ready(order, instance, statuses=Order.SERVING)
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
    """Take the server's one pending slot, bill (with Stripe), then send resize-vm.

    The race (two tabs submitting at once): if each checked "nothing pending" and then called
    Stripe, both changed the price and the loser's revert put the old price back under the
    winner's resize. So the command row, which holds the slot (the partial unique index), is
    created under the order's row lock before any Stripe call, as `billing=pending`: only its
    holder touches Stripe, every other request is refused by _check_nothing_pending.
    """
    billed = stripe_on()
    with transaction.atomic():
        locked, instance = _lock(order)
        if used := _used(instance, request_id):
            return Started(used, new=False)
        _check_plan_change(locked, instance, plan)
        command = ConsoleCommand.objects.create(
            instance=instance,
            request_id=request_id,
            kind=Kind.CHANGE_PLAN,
            from_plan=locked.plan,
            to_plan=plan,
            billing=ConsoleCommand.Billing.PENDING if billed else "",
        )
        if not billed:
            _send_resize(locked, instance, command, plan)
            return Started(command, new=True)
    try:  # outside the transaction: no row stays locked while Stripe answers
        change_subscription_price(
            order=locked, price_id=plan.stripe_price_id, idempotency_key=f"plan-{request_id}"
        )
    except CheckoutError as exc:
        _release(command)
        raise ConsoleError(f"{exc}; your plan is unchanged.") from exc
    with transaction.atomic():
        locked, instance = _lock(order)
        held = ConsoleCommand.objects.select_for_update().get(pk=command.pk)
        stopped = _held_after_billing(locked, instance, held)
        if stopped is None:
            _send_resize(locked, instance, held, plan)
    if stopped is not None:
        raise stopped
    return Started(held, new=True)


def _held_after_billing(
    order: Order, instance: Instance, held: ConsoleCommand
) -> ConsoleError | None:
    """Stripe changed the price; does the command still hold its slot and the server still run?
    If not, the price goes back (a failed command reverts after the commit) and the error says
    why; else the command is marked billed, to be sent."""
    if held.status != Status.SENT:
        # The slot was given up while Stripe answered (the command timed out and its price was
        # reverted then); this late change goes back too, under its own key.
        revert_price(order, held.from_plan or order.plan, held.request_id, late=True)
        return ConsoleError("Your plan change took too long and was cancelled; please retry.")
    ConsoleCommand.objects.filter(pk=held.pk).update(
        billing=ConsoleCommand.Billing.CHANGED, updated_at=timezone.now()
    )
    held.billing = ConsoleCommand.Billing.CHANGED
    try:
        check_ready(order, instance, statuses=frozenset({Order.Status.READY}))
    except ConsoleError as exc:  # the server stopped while Stripe answered
        fail(order, instance, held, str(exc).rstrip("."))
        return ConsoleError(f"{exc} Your plan is unchanged.")
    return None


def _send_resize(order: Order, instance: Instance, command: ConsoleCommand, plan: Plan) -> None:
    body = messages.resize_vm_body(
        vm_id=instance.vm_id,
        request_id=command.request_id,
        memory_mb=plan.memory_mb,
        vcpus=plan.vcpus,
        disk_gb=plan.disk_gb,
    )
    _send(order, instance, command, body)
    activity.record(
        order=order,
        kind=Activity.Kind.ACTION_REQUESTED,
        message=f"You asked to change to {activity.plan_label(plan)}.",
    )


def _release(command: ConsoleCommand) -> None:
    """Stripe refused: the slot is given back and nothing is left of the request."""
    ConsoleCommand.objects.filter(
        pk=command.pk, status=Status.SENT, billing=ConsoleCommand.Billing.PENDING
    ).delete()


_SLUG = re.compile(r"^[-a-zA-Z0-9_]{1,50}$")  # Plan.slug (a NUL or a long text never reaches SQL)


def chosen_plan(slug: str) -> Plan:
    """The plan a form names by slug; ConsoleError when it names none."""
    plan = Plan.objects.filter(slug=slug).first() if _SLUG.match(slug) else None
    if plan is None:
        raise ConsoleError("Please choose a plan.")
    return plan


def _check_plan_change(order: Order, instance: Instance, plan: Plan) -> None:
    check_ready(order, instance, statuses=frozenset({Order.Status.READY}))
    _check_nothing_pending(instance)
    choice = next((c for c in plan_choices(order, instance) if c.plan.pk == plan.pk), None)
    if choice is None:
        raise ConsoleError("That plan is not available for this server.")
    if choice.current:
        raise ConsoleError("Your server is on that plan already.")
    if choice.reason:
        raise ConsoleError(choice.reason)
