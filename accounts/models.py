"""The accounts app's tables: failed-login counters (accounts/throttle.py) and the queue of
outgoing email (accounts/mail_queue.py)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class LoginFailures(models.Model):
    """Failed logins counted for one username or one client address (hashed, see throttle.py).

    Times are Unix seconds (time.time()), as the throttle computes with them."""

    key = models.CharField(max_length=80, primary_key=True)
    count = models.PositiveIntegerField(default=0)
    last_failure_at = models.FloatField(db_index=True)
    locked_until = models.FloatField(default=0)

    def __str__(self) -> str:
        return f"{self.key}: {self.count} failures"


class QueuedEmail(models.Model):
    """An email a request (or a worker) handed to Django's mail API, waiting for the mail worker.

    Queued -> delivered (the row is deleted) or, after MAIL_GIVE_UP_SECONDS of failed attempts,
    given up (kept, with its last error, for staff). The fields are the EmailMessage's own, as
    JSON: no pickle, so a row written by one Django version is read by the next."""

    created_at = models.DateTimeField(default=timezone.now)
    subject = models.TextField()
    body = models.TextField()
    content_subtype = models.CharField(max_length=20, default="plain")
    from_email = models.TextField()
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list)
    bcc = models.JSONField(default=list)
    reply_to = models.JSONField(default=list)
    headers = models.JSONField(default=dict)
    alternatives = models.JSONField(default=list)  # [[content, mimetype], ...]
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_error = models.TextField(blank=True)
    given_up_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.subject!r} to {', '.join(self.to)}"
