"""manage.py send_queued_mail: deliver the queued emails (accounts/mail_queue.py)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts import mail_queue

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Send the queued emails through MAIL_DELIVERY_BACKEND; failed ones are retried."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, then exit")
        parser.add_argument(
            "--poll",
            type=float,
            default=None,
            help="seconds between queue polls (default: settings.MAIL_QUEUE_POLL_SECONDS)",
        )

    def handle(self, *args: Any, once: bool, poll: float | None, **options: Any) -> None:
        if once:
            sent = mail_queue.deliver_due()
            self.stdout.write(f"sent {sent}")
            return
        stop = threading.Event()

        def request_stop(signum: int, _frame: Any) -> None:
            log.info("event=mail_worker_stopping signal=%s", signum)
            stop.set()

        # SIGTERM (systemd, `warren run`) and Ctrl-C end the loop between two deliveries, never
        # in the middle of one.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, request_stop)
        mail_queue.run(stop, poll=settings.MAIL_QUEUE_POLL_SECONDS if poll is None else poll)
