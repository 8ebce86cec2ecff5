"""An order's timeline (orders/core/activity.py)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from orders.models.orders import Order


class ActivityKind(models.TextChoices):
    PAID = "paid", "Paid"
    SETTING_UP = "setting_up", "Setting up"
    READY = "ready", "Ready"
    STOPPED = "stopped", "Stopped unexpectedly"
    RESTARTED = "restarted", "Restarted"
    LOST = "lost", "Could not be restarted"
    SETUP_FAILED = "setup_failed", "Setup failed"
    RESTART_REQUESTED = "restart_requested", "Restart requested"
    PASSWORD_ROTATED = "password_rotated", "Password changed"  # noqa: S105 - a label
    PLAN_CHANGED = "plan_changed", "Plan changed"
    ACTION_REQUESTED = "action_requested", "Action requested"
    ACTION_FAILED = "action_failed", "Action failed"
    PAYMENT_FAILED = "payment_failed", "Payment failed"
    CANCELLED = "cancelled", "Cancelled"
    DELETED = "deleted", "Server deleted"
    REFUNDED = "refunded", "Refunded"
    WAITING_FOR_ROOM = "waiting_for_room", "Waiting for a server with room"


class Activity(models.Model):
    """One line of an order's timeline (orders/core/activity.py writes them, in the transaction of
    the change they record). Append-only: nothing updates or deletes a row."""

    Kind = ActivityKind

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="activities")
    kind = models.CharField(max_length=20, choices=ActivityKind.choices)
    message = models.CharField(max_length=300)  # what the customer reads; never a secret
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "activities"  # Django's default adds an s: "Activitys"
        ordering = ["-at", "-id"]
        indexes = [
            # The order page's timeline: one order's newest rows.
            models.Index(fields=["order", "-at", "-id"], name="activity_order_newest"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=ActivityKind.values), name="activity_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.kind}"
