"""manage.py prune_metrics: roll up the instances' metrics and drop what is past its retention
(raw points 24 h, 5-minute roll-ups and alarm history 30 days; orders/monitoring/metrics.py). The
event worker does the same every minute; this is for cron, or a shop whose worker was down."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from orders.monitoring.metrics import rollup_and_prune


class Command(BaseCommand):
    help = "Roll up the instances' metrics into 5-minute buckets and drop old points."

    def handle(self, *args: Any, **options: Any) -> None:
        counts = rollup_and_prune()
        self.stdout.write(" ".join(f"{key}={value}" for key, value in counts.items()))
