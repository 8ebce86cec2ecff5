"""Create the demo plans. Safe to run any number of times."""

from typing import Any

from django.core.management.base import BaseCommand

from store.models import Plan
from vmbackend.protocol import versions

DEMO_PLANS: list[dict[str, Any]] = [
    {
        "slug": "bunny",
        "rabbitmq_version": versions.DEFAULT_VERSION,
        "name": "Bunny",
        "memory_mb": 512,
        "vcpus": 1,
        "disk_gb": 4,
        "max_connections": 100,
        "max_queues": 200,
        "monthly_price_cents": 900,
        "sort_order": 10,
    },
    {
        "slug": "hare",
        "rabbitmq_version": versions.DEFAULT_VERSION,
        "name": "Hare",
        "memory_mb": 1024,
        "vcpus": 1,
        "disk_gb": 8,
        "max_connections": 500,
        "max_queues": 1000,
        "monthly_price_cents": 1900,
        "sort_order": 20,
    },
    {
        "slug": "warren",
        "rabbitmq_version": versions.DEFAULT_VERSION,
        "name": "Warren",
        "memory_mb": 2048,
        "vcpus": 2,
        "disk_gb": 16,
        "max_connections": 2000,
        "max_queues": 5000,
        "monthly_price_cents": 4900,
        "sort_order": 30,
    },
]


def seed_plans() -> tuple[int, int]:
    """Create the demo plans that are missing; returns (created, already there).

    A plan that exists (same slug) is left exactly as it is: `make run` calls this on every
    start, and staff may have changed prices, limits or the Stripe price id since.
    """
    created = existing = 0
    for spec in DEMO_PLANS:
        defaults = {k: v for k, v in spec.items() if k != "slug"}
        _, was_created = Plan.objects.get_or_create(slug=spec["slug"], defaults=defaults)
        created += was_created
        existing += not was_created
    return created, existing


class Command(BaseCommand):
    help = "Create the demo plans (Bunny, Hare, Warren) that do not exist yet; never changes existing ones."

    def handle(self, *args: Any, **options: Any) -> None:
        created, existing = seed_plans()
        self.stdout.write(f"demo plans: {created} created, {existing} already there")
