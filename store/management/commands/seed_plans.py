"""Create (or bring up to date) the demo plans. Safe to run any number of times."""

from typing import Any

from django.core.management.base import BaseCommand

from store.models import Plan

DEMO_PLANS: list[dict[str, Any]] = [
    {
        "slug": "bunny",
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
    """Create missing demo plans and reset the sizes of existing ones; returns (created, updated).

    Staff-edited fields that are not part of the demo definition (Stripe price id, active flag)
    are left alone, so re-running this after setting up Stripe changes nothing they chose.
    """
    created = updated = 0
    for spec in DEMO_PLANS:
        defaults = {k: v for k, v in spec.items() if k != "slug"}
        _, was_created = Plan.objects.update_or_create(slug=spec["slug"], defaults=defaults)
        created += was_created
        updated += not was_created
    return created, updated


class Command(BaseCommand):
    help = "Create the demo plans (Bunny, Hare, Warren); existing ones are updated, never duplicated."

    def handle(self, *args: Any, **options: Any) -> None:
        created, updated = seed_plans()
        self.stdout.write(f"demo plans: {created} created, {updated} updated")
