from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from vmbackend.protocol import messages, versions


def _within(bounds: tuple[int, ...]) -> list:
    """Validators for the protocol's bounds of one create-vm field (vmbackend/messages.py): the
    hosts refuse anything outside them, so a plan outside them could never get its VM."""
    return [MinValueValidator(bounds[0]), MaxValueValidator(bounds[1])]


def _between(field: str, bounds: tuple[int, ...]) -> models.CheckConstraint:
    return models.CheckConstraint(
        condition=models.Q(**{f"{field}__gte": bounds[0], f"{field}__lte": bounds[1]}),
        name=f"plan_{field}_within_host_bounds",
    )


class Plan(models.Model):
    """A hosted RabbitMQ plan: the VM size and broker limits a customer pays for monthly.

    Sizes and limits stay within the control protocol's bounds (messages.MEMORY_MB, VCPUS,
    DISK_GB, LIMIT), checked by the admin's form and by the database."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=80)
    memory_mb = models.PositiveIntegerField(validators=_within(messages.MEMORY_MB))
    vcpus = models.PositiveSmallIntegerField(default=1, validators=_within(messages.VCPUS))
    disk_gb = models.PositiveIntegerField(validators=_within(messages.DISK_GB))
    # The RabbitMQ series the plan's VMs run; it picks the image (vmbackend/images/versions.py).
    rabbitmq_version = models.CharField(
        "RabbitMQ version", max_length=8, choices=versions.CHOICES, default=versions.DEFAULT_VERSION
    )
    max_connections = models.PositiveIntegerField(validators=_within(messages.LIMIT))
    max_queues = models.PositiveIntegerField(validators=_within(messages.LIMIT))
    monthly_price_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    # Stripe Price (recurring, monthly) used by Checkout; blank for the offline payment path.
    stripe_price_id = models.CharField(max_length=100, blank=True)
    # TLS is always on where the hosts have it (docs/tls.md); this keeps the plain amqp:// and
    # http:// ports open too (clients that cannot do TLS). Off: TLS only.
    plain_ports = models.BooleanField(
        "plain ports open", default=True, help_text="Also open plain AMQP and HTTP next to TLS."
    )
    is_active = models.BooleanField(default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "monthly_price_cents"]
        constraints = [
            _between("memory_mb", messages.MEMORY_MB),
            _between("vcpus", messages.VCPUS),
            _between("disk_gb", messages.DISK_GB),
            _between("max_connections", messages.LIMIT),
            _between("max_queues", messages.LIMIT),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def image(self) -> str:
        """The VM image this plan's instances boot."""
        return versions.image_for(self.rabbitmq_version)

    @property
    def monthly_price(self) -> str:
        return f"{self.monthly_price_cents / 100:.2f}"


class WaitlistEntry(models.Model):
    """A signed-in customer who asked to hear when a sold-out plan is on sale again
    (orders/fleet/waitlist.py): the address is their account's, never one typed in.

    One entry per address and plan; emailed once (`notified_at`). Joining again after that, while
    the plan is sold out again, sets the same entry waiting again (`created_at` is when it last
    joined: the rate limit counts those)."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="waitlist")
    email = models.EmailField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,  # entries from before sign-in was required
        blank=True,
        on_delete=models.CASCADE,
        related_name="waitlist_entries",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "waitlist entries"  # Django's default: "Waitlist entrys"
        ordering = ["created_at", "id"]
        constraints = [
            # One entry per address and plan: a repeated click (or a second tab) adds nothing
            # and can never make a second email.
            models.UniqueConstraint(fields=["plan", "email"], name="waitlist_one_per_email"),
        ]
        indexes = [
            # store/waitlist.notify_waitlist: the entries still waiting, per plan.
            models.Index(
                fields=["plan", "created_at"],
                condition=models.Q(notified_at__isnull=True),
                name="waitlist_waiting",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.email} waits for {self.plan}"
