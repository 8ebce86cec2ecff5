"""A paid order's VM, and what each host event does to it (`HOST_EVENT_TRANSITIONS`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db import models
from django.utils import timezone

from orders.lib import encryption
from orders.lib.reasons import for_customer
from orders.models.fleet import Host
from orders.models.orders import InstanceStage, InstanceStatus, Order, OrderStatus, _StateMachine

# What the customer reads when a host's reason is not plain words.
GENERIC_FAILURE = "a problem on our hosts (our team has the details)"


def private_words(*host_ids: str) -> list[str]:
    """Words a customer must not read in a reason: every host id we know."""
    return [*Host.objects.values_list("host_id", flat=True), *host_ids]


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
    def failure_reason_for_customer(self) -> str:
        """failure_reason as the order page may show it (orders/lib/reasons.py); staff read it
        whole in the admin."""
        return for_customer(
            self.failure_reason, private=private_words(self.host_id), generic=GENERIC_FAILURE
        )

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
# A pair that is not listed changes nothing ("ignored"). The applier
# (orders/messaging/host_events.py) reads this table; it only adds the fields an event carries
# (stage, URLs, reason) and the side effects named in `effect`. docs/orders.md explains the choices.


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
