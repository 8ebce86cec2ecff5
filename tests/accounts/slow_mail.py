"""A mail backend as slow as an SMTP server (0.3 s a message) that delivers to Django's
`mail.outbox`, for showing that no request waits for a mail server."""

from __future__ import annotations

import time
from collections.abc import Sequence

from django.core.mail import EmailMessage
from django.core.mail.backends import locmem

SECONDS_PER_MESSAGE = 0.3


class SlowEmailBackend(locmem.EmailBackend):
    def send_messages(self, messages: Sequence[EmailMessage]) -> int:
        time.sleep(SECONDS_PER_MESSAGE * len(messages))
        return super().send_messages(messages)
