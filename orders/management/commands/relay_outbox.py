"""manage.py relay_outbox: publish outbox rows to the control broker (see orders/outbox.py)."""

from __future__ import annotations

import logging
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from orders.outbox import BROKER_ERRORS, Relay

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

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("event=relay_stopping signal=%s", signum)
            relay.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        log.info("event=relay_started once=%s", once)
        try:
            sent = relay.run(once=once)
        except BROKER_ERRORS as exc:  # only with --once; the loop itself retries
            raise CommandError(
                f"broker unavailable ({type(exc).__name__}); rows stay unsent"
            ) from exc
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("event=relay_stopped sent=%s", sent)
