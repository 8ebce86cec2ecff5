"""manage.py relay_outbox: publish outbox rows to the control broker (see
orders/messaging/outbox.py)."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from orders.management.worker_signals import stop_on_signals
from orders.messaging.outbox import BROKER_ERRORS, Relay

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Publish unsent outbox rows to RabbitMQ with publisher confirms; retries when it is down."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, then exit")
        parser.add_argument("--url", default=None, help="AMQP URL (default: settings.AMQP_URL)")
        parser.add_argument("--poll", type=float, default=0.5, help="seconds between DB polls")

    def handle(self, *args: Any, once: bool, url: str | None, poll: float, **options: Any) -> None:
        relay = Relay(url=url, poll_interval=poll)
        log.info("event=relay_started once=%s", once)
        try:
            with stop_on_signals(relay.stop, log, "relay_stopping"):
                sent = relay.run(once=once)
        except BROKER_ERRORS as exc:  # only with --once; the loop itself retries
            raise CommandError(
                f"broker unavailable ({type(exc).__name__}); rows stay unsent"
            ) from exc
        log.info("event=relay_stopped sent=%s", sent)
