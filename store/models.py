from django.db import models

from vmbackend.images import versions


class Plan(models.Model):
    """A hosted RabbitMQ plan: the VM size and broker limits a customer pays for monthly."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=80)
    memory_mb = models.PositiveIntegerField()
    vcpus = models.PositiveSmallIntegerField(default=1)
    disk_gb = models.PositiveIntegerField()
    # The RabbitMQ series the plan's VMs run; it picks the image (vmbackend/images/versions.py).
    rabbitmq_version = models.CharField(
        "RabbitMQ version", max_length=8, choices=versions.CHOICES, default=versions.DEFAULT_VERSION
    )
    max_connections = models.PositiveIntegerField()
    max_queues = models.PositiveIntegerField()
    monthly_price_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    # Stripe Price (recurring, monthly) used by Checkout; blank for the offline payment path.
    stripe_price_id = models.CharField(max_length=100, blank=True)
    is_active = models.BooleanField(default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "monthly_price_cents"]
        constraints = [
            models.CheckConstraint(condition=models.Q(memory_mb__gte=256), name="plan_memory_at_least_256mb"),
            models.CheckConstraint(condition=models.Q(vcpus__gte=1), name="plan_at_least_one_vcpu"),
            models.CheckConstraint(condition=models.Q(disk_gb__gte=1), name="plan_disk_at_least_1gb"),
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
