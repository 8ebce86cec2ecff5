"""The customer's console commands (orders/console/)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from orders.lib import encryption
from orders.lib.reasons import for_customer
from orders.models.instances import Instance, private_words
from orders.models.orders import _StateMachine


class ConsoleCommandKind(models.TextChoices):
    """What the customer asked for; the value is the protocol's command name."""

    RESTART = "restart-vm", "Restart"
    ROTATE_PASSWORD = "set-admin-password", "Rotate password"  # noqa: S105 - a command name
    CHANGE_PLAN = "resize-vm", "Change plan"


class ConsoleCommandStatus(models.TextChoices):
    SENT = "sent", "Sent to the host"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ConsoleCommand(_StateMachine):
    """One console action of the owner, sent to the VM's host and waiting for its outcome.

    `request_id` is the protocol's request-id and the form's one-time token: a repeated POST of
    the same form finds its row and does nothing again. At most one command per instance is
    `sent` at a time (a partial unique index): the next waits until the host answered.
    """

    Kind = ConsoleCommandKind
    Status = ConsoleCommandStatus

    S = Status
    # sent -> done (instance.command_done, or instance.ready for a restart) | failed
    # (instance.command_failed, or no answer within settings.CONSOLE_COMMAND_TIMEOUT). A host's
    # late command_done after that timeout still counts (failed -> done): the VM did change.
    TRANSITIONS = {
        S.SENT: frozenset({S.DONE, S.FAILED}),
        S.DONE: frozenset(),
        S.FAILED: frozenset({S.DONE}),
    }

    class Billing(models.TextChoices):
        """The money side of a plan change (docs/orders.md, "Changing plan")."""

        NONE = "", "Nothing to bill"
        # The command holds the server's slot and Stripe is being asked; nothing sent yet.
        PENDING = "pending", "Price change being asked of Stripe"
        CHANGED = "changed", "Subscription price changed"  # with Stripe, before resize-vm
        REVERTED = "reverted", "Price change reverted"  # the resize failed
        REVERT_FAILED = "revert_failed", "Revert failed: staff must fix the price"

    instance = models.ForeignKey(Instance, on_delete=models.PROTECT, related_name="commands")
    request_id = models.UUIDField(unique=True)
    kind = models.CharField(max_length=30, choices=ConsoleCommandKind.choices)
    status = models.CharField(
        max_length=10, choices=ConsoleCommandStatus.choices, default=ConsoleCommandStatus.SENT
    )
    from_plan = models.ForeignKey(
        "store.Plan", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    to_plan = models.ForeignKey(
        "store.Plan", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # set-admin-password: the new password, encrypted, until the host confirmed it (then it
    # becomes the instance's password and this is cleared) or refused it (cleared).
    new_password_encrypted = models.TextField(blank=True)
    # set-admin-password, done: when the owner was shown the new password (once).
    password_shown_at = models.DateTimeField(null=True, blank=True)
    billing = models.CharField(max_length=15, choices=Billing.choices, default="", blank=True)
    reason = models.CharField(max_length=300, blank=True)  # why it failed (the host's words)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=ConsoleCommandStatus.values),
                name="console_command_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(kind__in=ConsoleCommandKind.values),
                name="console_command_kind_valid",
            ),
            # One action at a time per server; also the page's "is something pending" lookup.
            models.UniqueConstraint(
                fields=["instance"],
                condition=models.Q(status="sent"),
                name="console_one_pending_per_instance",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.request_id} ({self.status})"

    def __repr__(self) -> str:  # never the password
        return f"<ConsoleCommand {self.kind} {self.request_id} status={self.status}>"

    @property
    def reason_for_customer(self) -> str:
        """Why it failed, as the owner may read it (orders/lib/reasons.py); staff see `reason`."""
        return for_customer(
            self.reason,
            private=private_words(self.instance.host_id),
            generic="its host could not do it",
        )

    @property
    def new_password(self) -> str:
        return encryption.decrypt(self.new_password_encrypted)
