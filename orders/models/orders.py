"""Orders and the status machine they share with instances, alarms and console commands.

Both state machines (Order and Instance) are written down once, in `Order.TRANSITIONS` and
`Instance.TRANSITIONS` below, with the named status sets beside them; what each host event does to
them is written down once too, in `HOST_EVENT_TRANSITIONS`. Every status change goes through
`move_to()`: a conditional UPDATE (compare-and-set on the status we read) so two workers racing on
the same row change it once.
docs/orders.md explains the states and the decisions behind them.
The models live in one module per area (orders/models/); `orders.models` re-exports them.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from orders.lib import wakeup


class InvalidTransition(Exception):
    """A status change that the state machine does not allow (a bug, or a stale caller)."""


class _StateMachine(models.Model):
    """Shared compare-and-set transition for models with a `status` field and TRANSITIONS."""

    TRANSITIONS: dict[str, frozenset[str]] = {}
    status: str  # each subclass's CharField

    class Meta:
        abstract = True

    def can_move_to(self, to: str) -> bool:
        return to in self.TRANSITIONS.get(self.status, frozenset())

    def move_to(self, to: str, **fields: Any) -> bool:
        """Change status from the one this object holds to `to`, with `fields`, in one UPDATE.

        Race: another worker (a second webhook delivery, the event consumer, an admin) may have
        changed the row since we read it. The UPDATE is conditional on the status we read, so
        only one of the racers wins; the loser gets False and must re-read before deciding.
        """
        if not self.can_move_to(to):
            raise InvalidTransition(f"{type(self).__name__} {self.pk}: {self.status} -> {to}")
        fields["updated_at"] = timezone.now()
        # Typed as a manager of any model: the abstract base has no status field of its own.
        manager: models.Manager[Any] = type(self)._default_manager
        updated = manager.filter(pk=self.pk, status=self.status).update(status=to, **fields)
        if not updated:
            return False
        self.status = to
        for name, value in fields.items():
            setattr(self, name, value)
        wake_order_page(self)
        return True


def wake_order_page(obj: models.Model) -> None:
    """Wake the order's waiting pages when this change commits (orders/lib/wakeup.py)."""
    order_pk = obj.pk if isinstance(obj, Order) else getattr(obj, "order_id", None)
    if order_pk is not None:
        wakeup.notify(wakeup.ORDERS, str(order_pk))


class OrderStatus(models.TextChoices):
    PENDING_PAYMENT = "pending_payment", "Awaiting payment"
    PAID = "paid", "Paid, VM requested"
    PROVISIONING = "provisioning", "Provisioning"
    READY = "ready", "Ready"
    PAST_DUE = "past_due", "Payment past due"
    FAILED = "failed", "Provisioning failed"
    CANCELLED = "cancelled", "Cancelled"
    DELETING = "deleting", "Deleting VM"
    DELETED = "deleted", "Deleted"


class RefundStatus(models.TextChoices):
    """A payment that arrived for an order that had already ended (docs/orders.md, "Refunds")."""

    NONE = "", "No refund"
    PENDING = "pending", "Refund pending"  # recorded; Stripe not done yet (or failed: retry)
    REFUNDED = "refunded", "Refunded"


class InstanceStatus(models.TextChoices):
    REQUESTED = "requested", "Requested"
    BOOTING = "booting", "Booting"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"
    LOST = "lost", "Lost"


class InstanceStage(models.TextChoices):
    NONE = "", "Waiting for a host"
    VM_STARTING = "vm_starting", "VM starting"
    GUEST_UP = "guest_up", "Guest up"
    RABBITMQ_STARTING = "rabbitmq_starting", "RabbitMQ starting"


class Order(_StateMachine):
    """A customer's subscription to one plan. The business view of what they bought."""

    Status = OrderStatus

    S = Status
    # The one place that says which order status may follow which (docs/orders.md has the why).
    TRANSITIONS = {
        S.PENDING_PAYMENT: frozenset({S.PAID, S.CANCELLED}),
        S.PAID: frozenset({S.PROVISIONING, S.READY, S.FAILED, S.PAST_DUE, S.DELETING}),
        S.PROVISIONING: frozenset({S.READY, S.FAILED, S.PAST_DUE, S.DELETING}),
        S.READY: frozenset({S.PAST_DUE, S.FAILED, S.DELETING}),
        # invoice.paid after a failed renewal brings the order back to where its VM is.
        S.PAST_DUE: frozenset({S.PAID, S.PROVISIONING, S.READY, S.FAILED, S.DELETING}),
        # A failed order: staff retry -> paid, or cancel. A *lost* VM that its host boots again
        # (start-vm) brings the order back -> provisioning / ready.
        S.FAILED: frozenset({S.PAID, S.PROVISIONING, S.READY, S.CANCELLED, S.DELETING}),
        S.CANCELLED: frozenset(),
        S.DELETING: frozenset({S.DELETED}),
        S.DELETED: frozenset(),
    }
    # Named status sets: every rule that asks "is the order one of ..." uses one of these.
    IN_GOOD_STANDING = frozenset({S.PAID, S.PROVISIONING, S.READY})  # paid up, VM wanted
    LIVE = IN_GOOD_STANDING | {S.PAST_DUE}  # paid for once, VM wanted
    ON_ITS_WAY = IN_GOOD_STANDING | {S.PENDING_PAYMENT}  # the order page shows the steps
    SERVING = frozenset({S.READY, S.PAST_DUE})  # the customer may see the connection details
    CANCELLABLE = LIVE | {S.PENDING_PAYMENT, S.FAILED}  # not already on its way out
    IN_PROGRESS = frozenset({S.PAID, S.PROVISIONING, S.DELETING})  # about to change by itself
    # The order page polls: in progress, or waiting for a payment or a staff retry.
    MAY_CHANGE = IN_PROGRESS | {S.PENDING_PAYMENT, S.FAILED}
    # Over: a payment arriving now is not wanted (refunded unless it paid this order before).
    ENDED = frozenset({S.CANCELLED, S.DELETING, S.DELETED})

    RefundStatus = RefundStatus

    public_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders"
    )
    plan = models.ForeignKey("store.Plan", on_delete=models.PROTECT, related_name="orders")
    status = models.CharField(
        max_length=20, choices=OrderStatus.choices, default=OrderStatus.PENDING_PAYMENT
    )
    stripe_checkout_session_id = models.CharField(max_length=255, blank=True)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    stripe_subscription_id = models.CharField(max_length=255, blank=True)
    cancel_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # A payment for an order that had ended is refunded, once per order (checkout.settle_refund):
    # pending (the fact, recorded with the webhook's receipt) -> refunded (Stripe's refund id).
    refund_status = models.CharField(
        max_length=10, choices=RefundStatus.choices, default=RefundStatus.NONE, blank=True
    )
    refund_of = models.CharField(max_length=255, blank=True)  # the Stripe pi_/ch_/in_ it paid
    stripe_refund_id = models.CharField(max_length=255, blank=True)
    refund_requested_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    refund_error = models.CharField(max_length=255, blank=True)  # the last failed attempt

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The customer's order list: their orders, newest first.
            models.Index(fields=["user", "-created_at"], name="order_user_created"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=OrderStatus.values), name="order_status_valid"
            ),
            # One Stripe session / subscription belongs to one order. Webhooks look orders up by
            # these ids, so the unique index also serves those lookups.
            models.UniqueConstraint(
                fields=["stripe_checkout_session_id"],
                condition=~models.Q(stripe_checkout_session_id=""),
                name="order_unique_checkout_session",
            ),
            models.UniqueConstraint(
                fields=["stripe_subscription_id"],
                condition=~models.Q(stripe_subscription_id=""),
                name="order_unique_subscription",
            ),
            models.CheckConstraint(
                condition=models.Q(status="pending_payment")
                | models.Q(status="cancelled")
                | models.Q(paid_at__isnull=False),
                name="order_paid_states_have_paid_at",
            ),
            models.CheckConstraint(
                condition=models.Q(refund_status__in=RefundStatus.values),
                name="order_refund_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(refund_status="") | models.Q(refund_requested_at__isnull=False),
                name="order_refund_has_requested_at",
            ),
            models.CheckConstraint(
                condition=~models.Q(refund_status="refunded") | models.Q(refunded_at__isnull=False),
                name="order_refunded_has_refunded_at",
            ),
            # One Stripe refund belongs to one order.
            models.UniqueConstraint(
                fields=["stripe_refund_id"],
                condition=~models.Q(stripe_refund_id=""),
                name="order_unique_stripe_refund",
            ),
        ]

    def __str__(self) -> str:
        return f"Order {self.public_id} ({self.status})"

    @property
    def can_cancel(self) -> bool:
        """The customer (or staff) may cancel: it is not already on its way out."""
        return self.status in self.CANCELLABLE

    @property
    def is_paid(self) -> bool:
        return self.paid_at is not None
