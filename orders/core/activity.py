"""An order's timeline (the Activity rows) and the emails that go with some of its lines.

`record()` runs inside the transaction of the change it records, so a line exists exactly when
its change committed. Events from hosts are applied once per (host, seq)
(orders/messaging/host_events.py drops repeated and older ones before anything here runs), so a
redelivered event adds no line and sends no second email. Emails go out after the commit
(orders/core/emails.py).

`after_host_event` reads what an applied host event did (the instance before and after) and says
it in the customer's words: the one place that maps host events to timeline lines and emails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from orders.core.emails import send_order_email_on_commit
from orders.models import Activity, ConsoleCommand, Instance, Order
from store.templatetags.money import price
from vmbackend.protocol import messages
from vmbackend.protocol.messages import Event

log = logging.getLogger(__name__)

Kind = Activity.Kind
TIMELINE_LENGTH = 20  # the order page shows the newest lines only
MESSAGE_MAX = 300


def record(*, order: Order, kind: str, message: str, at: datetime | None = None) -> Activity:
    """Append one line to the order's timeline (in the caller's transaction)."""
    return Activity.objects.create(
        order=order, kind=kind, message=message[:MESSAGE_MAX], at=at or timezone.now()
    )


def timeline(order: Order, limit: int = TIMELINE_LENGTH) -> list[Activity]:
    """The newest `limit` lines, newest first."""
    return list(Activity.objects.filter(order=order).order_by("-at", "-id")[:limit])


def plan_label(plan: object) -> str:
    return f"{plan} ({price(plan)}/month)"  # type: ignore[arg-type]


@dataclass(frozen=True)
class Before:
    """What an instance looked like before a host event was applied to it."""

    status: str
    restarting: bool
    ran_once: bool
    restart_pending: bool  # the owner asked for a restart (or a resize, which restarts)

    @classmethod
    def of(cls, instance: Instance) -> Before:
        pending = ConsoleCommand.objects.filter(
            instance=instance,
            status=ConsoleCommand.Status.SENT,
            kind__in=(ConsoleCommand.Kind.RESTART, ConsoleCommand.Kind.CHANGE_PLAN),
        ).exists()
        return cls(instance.status, instance.is_restarting, instance.ran_once, pending)


def after_host_event(order: Order, instance: Instance, event: Event, before: Before) -> None:
    """The timeline line (and email) for a host event that was just applied."""
    at = event_time(event)
    ready = Instance.Status.READY
    if event.type == messages.INSTANCE_ACCEPTED and instance.status == Instance.Status.BOOTING:
        record(
            order=order, kind=Kind.SETTING_UP, message="A host is setting up your server.", at=at
        )
    elif event.type == messages.INSTANCE_READY and instance.status == ready:
        _ready(order, instance, before, at)
    elif event.type == messages.INSTANCE_RESTARTING and before.status == Instance.Status.LOST:
        record(order=order, kind=Kind.SETTING_UP, message="Its host is starting your server again.")
    elif event.type == messages.INSTANCE_RESTARTING and not before.restarting:
        if before.restart_pending:
            return  # the restart the owner asked for: its command's outcome says it
        record(
            order=order,
            kind=Kind.STOPPED,
            message="Your server stopped unexpectedly; its host is restarting it.",
            at=at,
        )
        send_order_email_on_commit(
            order=order, kind="server_restarting", context={"stopped_at": at}
        )
    elif instance.status == Instance.Status.LOST and before.status != Instance.Status.LOST:
        if before.ran_once:
            record(
                order=order,
                kind=Kind.LOST,
                message="Your server stopped and could not be restarted. Our team is on it.",
                at=at,
            )
            send_order_email_on_commit(order=order, kind="server_lost", context={"stopped_at": at})
        else:
            record(order=order, kind=Kind.SETUP_FAILED, message="Setting up your server failed.")
    elif instance.status == Instance.Status.FAILED and before.status != Instance.Status.FAILED:
        record(order=order, kind=Kind.SETUP_FAILED, message="Setting up your server failed.", at=at)
    elif instance.status == Instance.Status.DELETED and before.status != Instance.Status.DELETED:
        record(
            order=order, kind=Kind.DELETED, message="Your server and its disk were deleted.", at=at
        )


def _ready(order: Order, instance: Instance, before: Before, at: datetime) -> None:
    if not before.ran_once:
        record(order=order, kind=Kind.READY, message="Your server is ready.", at=at)
        send_order_email_on_commit(
            order=order,
            kind="server_ready",
            context={"management_url": instance.management_url, "amqp_url": instance.amqp_url},
        )
    elif before.restarting:
        record(
            order=order,
            kind=Kind.RESTARTED,
            message="Your server was restarted after it stopped unexpectedly.",
            at=at,
        )
    elif before.status != Instance.Status.READY:
        record(order=order, kind=Kind.RESTARTED, message="Your server is running again.", at=at)


def event_time(event: Event) -> datetime:
    """When the host says it happened (never in the future; now if unreadable)."""
    now = timezone.now()
    try:
        when = datetime.fromisoformat(event.occurred_at)
    except ValueError:
        return now
    return min(when, now) if when.tzinfo is not None else now


def payment_failed(*, order: Order, renewal: bool) -> None:
    """A payment did not go through (a renewal: the order is past due; a delayed first payment:
    the order is cancelled). In the webhook's transaction; the email follows the commit."""
    message = (
        "Your monthly payment did not go through: please update your payment method."
        if renewal
        else "Your payment did not go through; the order was cancelled."
    )
    record(order=order, kind=Kind.PAYMENT_FAILED, message=message)
    send_order_email_on_commit(order=order, kind="payment_failed", context={"renewal": renewal})
