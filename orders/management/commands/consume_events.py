"""manage.py consume_events: apply the host daemons' events and read the dead letters (see
orders/messaging/host_events.py and orders/messaging/dead_letters.py)."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from orders.management.worker_signals import stop_on_signals
from orders.messaging.consumer import CONSUMER_ERRORS, EventConsumer

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Consume warren.events.store.q (instance events, host heartbeats) and read computing.dead.q"
        " (refused commands and events) into the shop."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="drain the queue, then exit")
        parser.add_argument("--url", default=None, help="AMQP URL (default: settings.AMQP_URL)")

    def handle(self, *args: Any, once: bool, url: str | None, **options: Any) -> None:
        consumer = EventConsumer(url=url)
        log.info("event=consumer_started once=%s", once)
        try:
            with stop_on_signals(consumer.stop, log, "consumer_stopping"):
                counts = consumer.run(once=once)
        except CONSUMER_ERRORS as exc:  # only with --once; the loop itself retries
            raise CommandError(f"cannot consume events ({type(exc).__name__})") from exc
        log.info(
            "event=consumer_stopped %s", " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        )
