"""Orders, their VM instances, Stripe webhook receipts, the AMQP outbox and host heartbeats.

Both state machines (Order and Instance) are written down once, in `Order.TRANSITIONS` and
`Instance.TRANSITIONS` below, with the named status sets beside them; what each host event does to
them is written down once too, in `HOST_EVENT_TRANSITIONS`. Every status change goes through
`move_to()`: a conditional UPDATE (compare-and-set on the status we read) so two workers racing on
the same row change it once.
docs/orders.md explains the states and the decisions behind them.
Over 400 lines as one thing: the app's models, where Django looks for them, each beside its table.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from orders.lib import encryption, wakeup


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


class Instance(_StateMachine):
    """The RabbitMQ VM that a paid order asked for. `public_id` is the protocol's vm-id."""

    Status = InstanceStatus
    Stage = InstanceStage

    S = Status
    # The one place that says which instance status may follow which.
    TRANSITIONS = {
        S.REQUESTED: frozenset({S.BOOTING, S.READY, S.FAILED, S.DELETING, S.LOST}),
        S.BOOTING: frozenset({S.READY, S.FAILED, S.DELETING, S.LOST}),
        S.READY: frozenset({S.FAILED, S.DELETING, S.LOST}),
        # Staff retry: a fresh vm-id is requested (see orders/core/provisioning.py).
        S.FAILED: frozenset({S.REQUESTED, S.DELETING}),
        # Lost = its QEMU died; the host keeps the disk and may boot it again (start-vm).
        S.LOST: frozenset({S.REQUESTED, S.BOOTING, S.READY, S.DELETING}),
        S.DELETING: frozenset({S.DELETED}),
        S.DELETED: frozenset(),
    }
    LIVE = frozenset({S.REQUESTED, S.BOOTING, S.READY})  # a VM exists or is on its way
    NOT_YET_READY = frozenset({S.REQUESTED, S.BOOTING, S.LOST})  # a ready event makes it ready
    RETRYABLE = frozenset({S.FAILED, S.LOST})  # staff may ask for a new VM
    WITHOUT_VM = frozenset({S.FAILED, S.DELETED})  # the host cleaned up: nothing to delete

    order = models.OneToOneField(Order, on_delete=models.PROTECT, related_name="instance")
    public_id = models.UUIDField(unique=True, default=uuid.uuid4)
    status = models.CharField(
        max_length=20, choices=InstanceStatus.choices, default=InstanceStatus.REQUESTED
    )
    stage = models.CharField(max_length=30, choices=InstanceStage.choices, default="", blank=True)
    host_id = models.CharField(max_length=100, blank=True)
    management_url = models.CharField(max_length=500, blank=True)
    amqp_url = models.CharField(max_length=500, blank=True)
    admin_username = models.CharField(max_length=100)
    # Generated with `secrets` at payment time. The column holds only a Fernet token (key from
    # WARREN_SECRETS_KEYS, orders/lib/encryption.py); read and write it through `admin_password`.
    # Decrypted only where the password is used (the customer's reveal, the relay publishing
    # create-vm), so a key problem never stops the event worker. Never logged, never in the admin.
    admin_password_encrypted = models.TextField(blank=True)
    failure_reason = models.TextField(blank=True)
    # The (host_id, seq) of the last event applied: older or repeated events change nothing.
    last_event_seq = models.PositiveBigIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    ready_at = models.DateTimeField(null=True, blank=True)
    # Self-healing on the host (instance.restarting, then instance.ready): when the server last
    # stopped on its own, when it last came back, and how often. The order page tells the truth.
    last_crash_at = models.DateTimeField(null=True, blank=True)
    last_restart_at = models.DateTimeField(null=True, blank=True)
    restart_count = models.PositiveIntegerField(default=0)
    # The VM's own size (set from the plan at payment, then from each resize-vm's command_done):
    # what it has, not what its plan says today. And what it runs, from the last instance.ready's
    # `runtime` (runtime_at = that ready: the last (re)start). docs/orders.md, "Console".
    memory_mb = models.PositiveIntegerField(null=True, blank=True)
    vcpus = models.PositiveSmallIntegerField(null=True, blank=True)
    disk_gb = models.PositiveIntegerField(null=True, blank=True)
    created_rabbitmq_version = models.CharField(max_length=8, blank=True)  # the plan's series
    rabbitmq_version = models.CharField(max_length=100, blank=True)
    erlang_version = models.CharField(max_length=100, blank=True)
    node_name = models.CharField(max_length=100, blank=True)
    runtime_at = models.DateTimeField(null=True, blank=True)
    # Placement (orders/fleet/placement.py, docs/fleet.md): the host the relay sent the outstanding
    # create-vm to ("" = the shared queue, or not sent yet). While the instance is requested it
    # is this host's claim; hosts that declined it are not tried again for this vm-id.
    placed_on = models.CharField(max_length=100, blank=True)
    placement_tries = models.PositiveSmallIntegerField(default=0)
    declined_by = models.JSONField(default=list, blank=True)
    # Set when the relay found no live host with room for it (it went to the shared queue, and
    # the customer was told); staff see these at once (admin filter "waiting for room").
    unplaced_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # mark_silent_hosts: the instances living on a host that went quiet.
            models.Index(fields=["host_id", "status"], name="instance_host_status"),
            # orders/fleet/placement.py: the claims (requested instances) placed on each host.
            models.Index(fields=["placed_on", "status"], name="instance_placed_status"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=InstanceStatus.values),
                name="instance_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(stage__in=InstanceStage.values), name="instance_stage_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Instance {self.public_id} ({self.status})"

    def __repr__(self) -> str:  # never the password
        return f"<Instance {self.public_id} status={self.status} host={self.host_id or '-'}>"

    @property
    def admin_password(self) -> str:
        """The VM's admin password in clear ("" once forgotten). Raises UnreadableSecret when no
        configured key opens it."""
        return encryption.decrypt(self.admin_password_encrypted)

    @admin_password.setter
    def admin_password(self, value: str) -> None:
        self.admin_password_encrypted = encryption.encrypt(value)

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    @property
    def can_retry(self) -> bool:
        return self.status in self.RETRYABLE

    @property
    def is_restarting(self) -> bool:
        """Its server stopped on its own and the host has not brought it back yet."""
        return self.last_crash_at is not None and (
            self.last_restart_at is None or self.last_restart_at < self.last_crash_at
        )

    @property
    def ran_once(self) -> bool:
        """The customer had a working server (so a loss is a server down, not a failed setup)."""
        return self.ready_at is not None

    @property
    def vm_id(self) -> str:
        return str(self.public_id)


# -- host events -> transitions --------------------------------------------------------------
#
# What a host's event does to an instance and its order, for each (event type, instance status).
# A pair that is not listed changes nothing ("ignored"). The applier (orders/messaging/host_events.py) reads
# this table; it only adds the fields an event carries (stage, URLs, reason) and the side effects
# named in `effect`. docs/orders.md explains the choices.


@dataclass(frozen=True)
class EventStep:
    instance_to: str | None = None  # None: the instance keeps its status
    order_to: str | None = None  # the order moves there, but only from one of `order_from`
    order_from: frozenset[str] = frozenset()
    effect: str = ""  # one of the EFFECT_* names below, or nothing


EFFECT_RESEND_DELETION = "resend_deletion"  # a host has the VM of a deleting instance
EFFECT_FORGET_CREDENTIALS = "forget_credentials"  # the VM is gone: drop its password
EFFECT_UPDATE_URLS = "update_urls"  # ready again after a restart: ports may have changed
EFFECT_UPDATE_STAGE = "update_stage"  # boot progress within booting
EFFECT_RECORD_CRASH = "record_crash"  # the server stopped on its own; its host restarts it

_IS, _OS = InstanceStatus, OrderStatus
_RESEND = EventStep(effect=EFFECT_RESEND_DELETION)
_GONE = EventStep(_IS.DELETED, _OS.DELETED, frozenset({_OS.DELETING}), EFFECT_FORGET_CREDENTIALS)


def _ends(status: str) -> EventStep:
    """A live instance without a working VM any more: the order fails (staff can retry)."""
    return EventStep(status, _OS.FAILED, Order.LIVE)


HOST_EVENT_TRANSITIONS: dict[tuple[str, str], EventStep] = {
    # accepted: a host took the create-vm.
    ("instance.accepted", _IS.REQUESTED): EventStep(
        _IS.BOOTING, _OS.PROVISIONING, frozenset({_OS.PAID})
    ),
    # Cancelled before any host had it: the first delete-vm reached nobody.
    ("instance.accepted", _IS.DELETING): _RESEND,
    # progress: booting; a lost VM its host boots again is booting too.
    **{
        ("instance.progress", status): EventStep(
            _IS.BOOTING, _OS.PROVISIONING, frozenset({_OS.PAID, _OS.FAILED})
        )
        for status in (_IS.REQUESTED, _IS.LOST)
    },
    ("instance.progress", _IS.BOOTING): EventStep(
        None, _OS.PROVISIONING, frozenset({_OS.PAID, _OS.FAILED}), EFFECT_UPDATE_STAGE
    ),
    # ready: past_due stays past_due; failed only happens here for a lost VM its host revived.
    **{
        ("instance.ready", status): EventStep(
            _IS.READY, _OS.READY, frozenset({_OS.PAID, _OS.PROVISIONING, _OS.FAILED})
        )
        for status in Instance.NOT_YET_READY
    },
    ("instance.ready", _IS.READY): EventStep(effect=EFFECT_UPDATE_URLS),
    # The VM finished booting after the order was cancelled: delete it (again).
    ("instance.ready", _IS.DELETING): _RESEND,
    # failed / lost / deleted on the host: a live instance ends, the order fails.
    **{("instance.failed", status): _ends(_IS.FAILED) for status in Instance.LIVE},
    **{("instance.lost", status): _ends(_IS.LOST) for status in Instance.LIVE},
    # An operator deleted the VM on the host: the customer has nothing, as if it were lost.
    **{("instance.deleted", status): _ends(_IS.LOST) for status in Instance.LIVE},
    # A VM we were deleting anyway: the host gave up on it or deleted it.
    ("instance.failed", _IS.DELETING): _GONE,
    ("instance.deleted", _IS.DELETING): _GONE,
    # (instance.lost of a deleting instance: not listed, the delete-vm cleans up what is left.)
    # The host boots a lost VM again from its disk (an operator's start-vm).
    ("instance.started", _IS.LOST): EventStep(
        _IS.BOOTING, _OS.PROVISIONING, frozenset({_OS.FAILED})
    ),
    # Self-healing: a ready server's QEMU stopped on its own and its host starts it again from
    # its disk. The server keeps its status (and the order stays ready: the customer's data and
    # URLs stay); the crash time is recorded, and the next instance.ready records the restart.
    ("instance.restarting", _IS.READY): EventStep(effect=EFFECT_RECORD_CRASH),
    # ... and a lost one (a host back from a reboot) is booting again.
    ("instance.restarting", _IS.LOST): EventStep(
        _IS.BOOTING, _OS.PROVISIONING, frozenset({_OS.FAILED}), EFFECT_RECORD_CRASH
    ),
}
# stopped/started otherwise: recorded by seq only (the shop does not show power state).
RECORDED_ONLY = frozenset({"instance.stopped", "instance.started"})

# Which order status matches where its instance is (invoice.paid after past_due goes back there).
ORDER_STATUS_FOR_INSTANCE: dict[str, str] = {
    _IS.REQUESTED: _OS.PAID,
    _IS.BOOTING: _OS.PROVISIONING,
    _IS.READY: _OS.READY,
    _IS.FAILED: _OS.FAILED,
    _IS.LOST: _OS.FAILED,
    _IS.DELETING: _OS.DELETING,
    _IS.DELETED: _OS.DELETED,
}


class WebhookEvent(models.Model):
    """A Stripe event we received. The unique event id turns redeliveries into no-ops."""

    class Result(models.TextChoices):
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored (nothing to change)"
        UNKNOWN_ORDER = "unknown_order", "No matching order"
        UNHANDLED_TYPE = "unhandled_type", "Event type not handled"

    stripe_event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    livemode = models.BooleanField(default=False)
    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="webhook_events"
    )
    result = models.CharField(max_length=20, choices=Result.choices)
    detail = models.CharField(max_length=255, blank=True)
    received_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_event_id}"


class OutboxMessage(models.Model):
    """An AMQP message written in the same transaction as the change that needs it.

    The relay (manage.py relay_outbox) publishes unsent rows with publisher confirms and sets
    sent_at afterwards: at-least-once, so consumers de-duplicate by message_id / vm-id.
    """

    message_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    exchange = models.CharField(max_length=255)
    routing_key = models.CharField(max_length=255)
    body = models.JSONField()
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="outbox_messages"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # The relay's query: unsent rows, oldest first.
            models.Index(
                fields=["created_at", "id"],
                condition=models.Q(sent_at__isnull=True),
                name="outbox_unsent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.routing_key} {self.message_id}"


class Host(models.Model):
    """A host daemon, as last heard in its heartbeat."""

    host_id = models.CharField(max_length=100, unique=True)
    last_heartbeat_at = models.DateTimeField()
    capacity = models.PositiveIntegerField(default=0)
    running = models.PositiveIntegerField(default=0)
    free_slots = models.PositiveIntegerField(default=0)
    version = models.CharField(max_length=50, blank=True)
    # The host's warm pool as its last heartbeat told it (vmbackend/pool.py), "" without one.
    pool = models.CharField(max_length=2000, blank=True)
    # Set by mark_silent_hosts() when heartbeats stop; cleared by the next heartbeat.
    silent_since = models.DateTimeField(null=True, blank=True)
    # Resources from the last heartbeat (0: a daemon that does not report them: nothing is
    # placed on it by size). docs/fleet.md.
    memory_total_mb = models.PositiveBigIntegerField(default=0)
    memory_used_mb = models.PositiveBigIntegerField(default=0)
    vcpus_total = models.PositiveBigIntegerField(default=0)
    vcpus_used = models.PositiveBigIntegerField(default=0)
    disk_total_gb = models.PositiveBigIntegerField(default=0)
    disk_used_gb = models.PositiveBigIntegerField(default=0)
    # Staff: a draining host takes no new VMs (maintenance); its VMs keep running.
    draining = models.BooleanField(default=False)

    class Meta:
        ordering = ["host_id"]

    def __str__(self) -> str:
        return self.host_id

    def is_silent_at(self, now: datetime) -> bool:
        timeout = timedelta(seconds=settings.HOST_HEARTBEAT_TIMEOUT)
        return self.last_heartbeat_at < now - timeout


class DeadLetter(models.Model):
    """A message nobody could serve, read back from the dead-letter queue `computing.dead`.

    Commands a host refused (a create-vm here fails its order with the host's reason) and events
    the shop refused. Kept so staff see them in the admin; bounded (orders/messaging/dead_letters.py keeps
    the newest DEAD_LETTERS_KEPT rows). The body is stored with every password masked.
    """

    received_at = models.DateTimeField(default=timezone.now, editable=False)
    rejected_by = models.CharField(max_length=100)  # a host id, or "shop"
    routing_key = models.CharField(max_length=255, blank=True)
    message_id = models.CharField(max_length=100, blank=True)
    reason = models.TextField()
    body = models.TextField(blank=True)
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="dead_letters"
    )
    # What the shop did with it (orders/messaging/dead_letters.py): order_failed, deletion_finished, ...
    result = models.CharField(max_length=30)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.routing_key or '-'} refused by {self.rejected_by}"


# -- metrics and alarms (issue 12; orders/monitoring/metrics.py, orders/monitoring/alarms.py, docs/metrics.md) --------


class MetricSample(models.Model):
    """One `instance.metrics` event as received: kept for RAW_RETENTION (24 h), then rolled up.

    The management API's fields are NULL in an unreachable sample (the host could not ask)."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="metric_samples")
    at = models.DateTimeField()  # the host's occurred_at (never in the future)
    reachable = models.BooleanField()
    messages_ready = models.BigIntegerField(null=True)
    messages_unacked = models.BigIntegerField(null=True)
    publish_rate = models.FloatField(null=True)
    deliver_rate = models.FloatField(null=True)
    ack_rate = models.FloatField(null=True)
    connections = models.BigIntegerField(null=True)
    channels = models.BigIntegerField(null=True)
    consumers = models.BigIntegerField(null=True)
    queues = models.BigIntegerField(null=True)
    mem_used = models.BigIntegerField(null=True)
    mem_limit = models.BigIntegerField(null=True)
    disk_free = models.BigIntegerField(null=True)
    disk_free_limit = models.BigIntegerField(null=True)
    mem_alarm = models.BooleanField(null=True)
    disk_alarm = models.BooleanField(null=True)
    uptime_s = models.BigIntegerField(null=True)
    cpu_percent = models.FloatField(default=0.0)
    rss_bytes = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            # The graphs' query (an instance's points in a time window, and its latest point) and
            # the duplicate check: a redelivered event (same occurred_at) is stored once.
            models.UniqueConstraint(fields=["instance", "at"], name="metric_sample_instance_at"),
        ]
        indexes = [
            # rollup_and_prune: the raw points of all instances in a time range (roll-up) and the
            # ones older than RAW_RETENTION (prune).
            models.Index(fields=["at"], name="metric_sample_at"),
        ]

    def __str__(self) -> str:
        return f"{self.instance_id} @ {self.at:%Y-%m-%d %H:%M:%S}"

    @property
    def messages_queued(self) -> int | None:
        if self.messages_ready is None or self.messages_unacked is None:
            return None
        return self.messages_ready + self.messages_unacked


class MetricRollup(models.Model):
    """Averages of an instance's raw points over one 5-minute bucket, kept for 30 days.

    Averages over the reachable samples of the bucket (NULL when none was reachable);
    `max_messages_queued` keeps a short queue spike visible on the 7-day graph."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="metric_rollups")
    bucket = models.DateTimeField()  # start of the 5-minute bucket (UTC, aligned to 5 minutes)
    samples = models.PositiveIntegerField()
    reachable_samples = models.PositiveIntegerField()
    messages_queued = models.FloatField(null=True)
    max_messages_queued = models.BigIntegerField(null=True)
    publish_rate = models.FloatField(null=True)
    deliver_rate = models.FloatField(null=True)
    ack_rate = models.FloatField(null=True)
    connections = models.FloatField(null=True)
    mem_used = models.FloatField(null=True)
    mem_limit = models.FloatField(null=True)
    disk_free = models.FloatField(null=True)
    disk_free_limit = models.FloatField(null=True)
    cpu_percent = models.FloatField(null=True)

    class Meta:
        constraints = [
            # The 7-day graph's query (an instance's buckets in a window) and the roll-up's
            # replace-by-bucket (one row per instance and bucket).
            models.UniqueConstraint(fields=["instance", "bucket"], name="metric_rollup_bucket"),
        ]
        indexes = [
            # rollup_and_prune: buckets older than ROLLUP_RETENTION, and the newest bucket done.
            models.Index(fields=["bucket"], name="metric_rollup_bucket_time"),
        ]

    def __str__(self) -> str:
        return f"{self.instance_id} {self.bucket:%Y-%m-%d %H:%M}"


class AlarmKind(models.TextChoices):
    MEMORY = "memory", "Memory alarm"
    DISK = "disk", "Disk alarm"
    UNREACHABLE = "unreachable", "Server not answering"
    QUEUE_DEPTH = "queue_depth", "Messages queued above"
    CONNECTIONS = "connections", "Connections above"
    MESSAGE_RATE = "message_rate", "Publish rate above"


class AlarmState(models.TextChoices):
    OK = "ok", "OK"
    FIRING = "firing", "Firing"


class Alarm(_StateMachine):
    """A condition on an instance's samples (orders/monitoring/alarms.py evaluates it as samples arrive).

    Fires once when its condition has held for `duration_s`, clears once when the clear
    condition has held for `duration_s` (docs/metrics.md, Alarms). Three defaults per instance
    (memory, disk, unreachable); the customer adds thresholds (queue depth, connections, rate)."""

    Kind = AlarmKind
    State = AlarmState
    TRANSITIONS = {
        AlarmState.OK: frozenset({AlarmState.FIRING}),
        AlarmState.FIRING: frozenset({AlarmState.OK}),
    }
    DEFAULT_KINDS = (AlarmKind.MEMORY, AlarmKind.DISK, AlarmKind.UNREACHABLE)
    THRESHOLD_KINDS = (AlarmKind.QUEUE_DEPTH, AlarmKind.CONNECTIONS, AlarmKind.MESSAGE_RATE)

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="alarms")
    kind = models.CharField(max_length=20, choices=AlarmKind.choices)
    is_default = models.BooleanField(default=False)
    threshold = models.FloatField(null=True, blank=True)  # threshold kinds only
    duration_s = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=AlarmState.choices, default=AlarmState.OK)
    # Start of the current run of samples pointing the other way (holding while ok, clear while
    # firing); NULL when the last sample did not. The time of the newest sample evaluated.
    pending_since = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    fired_at = models.DateTimeField(null=True, blank=True)
    cleared_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-is_default", "kind", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=AlarmState.values), name="alarm_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(kind__in=AlarmKind.values), name="alarm_kind_valid"
            ),
            # One of each default per instance (ensure_default_alarms may race with itself).
            models.UniqueConstraint(
                fields=["instance", "kind"],
                condition=models.Q(is_default=True),
                name="alarm_one_default_per_kind",
            ),
        ]
        # The evaluation's query (an instance's alarms) uses the instance foreign key's index.

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.status})"


class AlarmEvent(models.Model):
    """A fire or a clear, as shown on the order page and sent by email (kept ROLLUP_RETENTION)."""

    class Change(models.TextChoices):
        FIRED = "fired", "Fired"
        CLEARED = "cleared", "Cleared"

    alarm = models.ForeignKey(Alarm, on_delete=models.CASCADE, related_name="events")
    change = models.CharField(max_length=10, choices=Change.choices)
    at = models.DateTimeField()
    value = models.FloatField(null=True, blank=True)  # the sample's value that decided it

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            # rollup_and_prune: events older than ROLLUP_RETENTION.
            models.Index(fields=["at"], name="alarm_event_at"),
        ]

    def __str__(self) -> str:
        return f"{self.alarm} {self.change} {self.at:%Y-%m-%d %H:%M}"


# -- the customer's console and the order's timeline (issue 11; orders/console/commands.py, activity.py) --


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
    def new_password(self) -> str:
        return encryption.decrypt(self.new_password_encrypted)


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
    """One line of an order's timeline (orders/core/activity.py writes them, in the transaction of the
    change they record). Append-only: nothing updates or deletes a row."""

    Kind = ActivityKind

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="activities")
    kind = models.CharField(max_length=20, choices=ActivityKind.choices)
    message = models.CharField(max_length=300)  # what the customer reads; never a secret
    at = models.DateTimeField(default=timezone.now)

    class Meta:
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
