"""Outgoing email through a queue in the database, sent by the mail worker.

settings.EMAIL_BACKEND is `QueueBackend`: `send_mail` and every other Django mail call only
inserts a `QueuedEmail` row, in the caller's transaction, so no request waits for a mail server
(a request that mails only for a known address would otherwise answer 0.3 s slower and tell that
the address is known). `manage.py send_queued_mail` (the `mail` service) delivers the rows through
settings.MAIL_DELIVERY_BACKEND (env EMAIL_BACKEND: SMTP in production). A failed delivery stays
queued and is retried with a growing delay; after MAIL_GIVE_UP_SECONDS it is given up, logged
and kept for staff. Delivery is at least once: a worker killed between the server's answer and the
row's deletion sends that mail again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import formatdate

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.db.models import F
from django.utils import timezone

from accounts.models import QueuedEmail

log = logging.getLogger(__name__)

# A sender owns a row it claimed for this long; a sender that died frees it when this runs out.
LEASE = timedelta(minutes=5)
MAX_RETRY_DELAY = timedelta(hours=1)


class QueueBackend(BaseEmailBackend):
    """Django's EMAIL_BACKEND that queues: the message is sent later by `deliver_due`."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        rows = [_to_row(message) for message in email_messages]
        QueuedEmail.objects.bulk_create(rows)
        for row in rows:
            log.info("event=mail_queued to_count=%d", len(row.to) + len(row.cc) + len(row.bcc))
        return len(rows)


def _to_row(message: EmailMessage) -> QueuedEmail:
    if message.attachments:
        # No email of the shop has any; storing them would need more than JSON.
        raise ValueError("the mail queue carries no attachments")
    headers = dict(message.extra_headers)
    # The time it was written, not the time a retry finally delivers it.
    headers.setdefault("Date", formatdate(localtime=settings.EMAIL_USE_LOCALTIME))
    alternatives = getattr(message, "alternatives", [])
    return QueuedEmail(
        subject=str(message.subject),
        body=str(message.body),
        content_subtype=message.content_subtype,
        from_email=message.from_email,
        to=list(message.to),
        cc=list(message.cc),
        bcc=list(message.bcc),
        reply_to=list(message.reply_to),
        headers=headers,
        alternatives=[[str(content), str(mimetype)] for content, mimetype in alternatives],
    )


def _to_message(row: QueuedEmail) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(
        subject=row.subject,
        body=row.body,
        from_email=row.from_email,
        to=row.to,
        cc=row.cc,
        bcc=row.bcc,
        reply_to=row.reply_to,
        headers=row.headers,
    )
    message.content_subtype = row.content_subtype
    for content, mimetype in row.alternatives:
        message.attach_alternative(content, mimetype)
    return message


def retry_delay(attempts: int) -> timedelta:
    """30 s after the first failed attempt, doubling, at most an hour."""
    doublings = min(max(0, attempts - 1), 20)  # bounded: timedelta overflows past 10**9 days
    return min(MAX_RETRY_DELAY, timedelta(seconds=30 * 2**doublings))


def delivery_backend() -> str:
    backend: str = settings.MAIL_DELIVERY_BACKEND
    if backend == f"{__name__}.QueueBackend":
        raise ImproperlyConfigured("EMAIL_BACKEND (the delivering backend) cannot be the queue")
    return backend


def deliver_due(
    *, now: datetime | None = None, limit: int = 50, stop: threading.Event | None = None
) -> int:
    """One pass: deliver up to `limit` queued emails that are due, fewer if `stop` is set
    meanwhile. Returns how many went out. `now` fixes the clock (tests); otherwise each claim
    reads it anew, as a pass of slow sends can outlast a lease."""
    due = list(
        QueuedEmail.objects.filter(given_up_at=None, next_attempt_at__lte=now or timezone.now())
        .order_by("next_attempt_at", "pk")
        .values_list("pk", "next_attempt_at")[:limit]
    )
    if not due:
        return 0
    connection = get_connection(delivery_backend())
    sent = 0
    for pk, due_at in due:
        if stop is not None and stop.is_set():
            break
        # Race: two senders (a second machine, or the old and the new worker during a restart)
        # may list the same row. The conditional UPDATE lets one of them claim it; the other
        # sees 0 rows and skips it.
        at = now or timezone.now()
        claimed = QueuedEmail.objects.filter(
            pk=pk, next_attempt_at=due_at, given_up_at=None
        ).update(next_attempt_at=at + LEASE, attempts=F("attempts") + 1)
        if not claimed:
            continue
        row = QueuedEmail.objects.get(pk=pk)
        try:
            connection.send_messages([_to_message(row)])
        except Exception as exc:  # noqa: BLE001 - one bad message or server must not stop the queue
            _failed(row, exc, now or timezone.now())
            continue
        QueuedEmail.objects.filter(pk=pk).delete()
        sent += 1
        log.info("event=mail_sent mail_id=%s attempts=%d", pk, row.attempts)
    return sent


def _failed(row: QueuedEmail, exc: Exception, now: datetime) -> None:
    # One line: a server's multi-line answer must not forge log lines.
    error = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
    give_up = now - row.created_at >= timedelta(seconds=settings.MAIL_GIVE_UP_SECONDS)
    if give_up:
        QueuedEmail.objects.filter(pk=row.pk).update(last_error=error, given_up_at=now)
        log.error(
            "event=mail_given_up mail_id=%s attempts=%d error=%s", row.pk, row.attempts, error
        )
        return
    retry_at = now + retry_delay(row.attempts)
    QueuedEmail.objects.filter(pk=row.pk).update(last_error=error, next_attempt_at=retry_at)
    log.warning(
        "event=mail_failed mail_id=%s attempts=%d retry_at=%s error=%s",
        row.pk,
        row.attempts,
        retry_at.isoformat(),
        error,
    )


def run(stop: threading.Event, *, poll: float) -> None:
    """Deliver what is due every `poll` seconds until `stop` is set."""
    log.info("event=mail_worker_started poll=%s backend=%s", poll, delivery_backend())
    while not stop.is_set():
        if deliver_due(stop=stop) == 0:
            stop.wait(poll)
    log.info("event=mail_worker_stopped")
