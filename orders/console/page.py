"""What the order page shows of the console: its state, the confirmation pages, why an action
is blocked (orders/console/).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from orders.console.commands import (
    ConsoleError,
    check_ready,
    last_failure,
    plan_choices,
    stripe_on,
    unseen_password,
)
from orders.console.outcomes import WHAT, Kind, Status, pending_command
from orders.core import activity
from orders.models import Instance, Order

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
        check_ready(order, instance, statuses=statuses)
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
