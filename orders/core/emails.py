"""Emails to an order's owner: one function, one pair of templates per kind.

`send_order_email(order=..., kind="server_ready", context={...})` renders
`templates/emails/<kind>_subject.txt` (one line) and `templates/emails/<kind>.txt` with the order,
its owner and the order page's absolute URL added to `context`, and sends it through Django's email
backend (EMAIL_BACKEND; the console backend unless configured, .env.example). A mail server error is
logged and swallowed: an email is a courtesy and must never undo or retry the change it tells of.

Callers inside a transaction use `send_order_email_on_commit`, so a rolled-back change sends
nothing and the mail server is never waited on while rows are locked.

Never a password in an email: a context key that names one is refused (ValueError), and the
templates link to the order page, where the owner signs in to see credentials.
"""

from __future__ import annotations

import logging
import re
import smtplib
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse

from orders.models import Order

log = logging.getLogger(__name__)

_KIND = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
# Context keys that could carry a credential into a mailbox.
_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)


def order_url(order: Order) -> str:
    """The order page's absolute URL (WARREN_SITE_URL): what every email links to."""
    path = reverse("orders:detail", kwargs={"public_id": order.public_id})
    site: str = settings.SITE_URL
    return site.rstrip("/") + path


def render_order_email(*, order: Order, kind: str, context: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) of the email `kind` about `order`. ValueError for a malformed kind or a
    context key naming a secret; TemplateDoesNotExist for a kind without templates."""
    if not _KIND.match(kind):
        raise ValueError(f"bad email kind {kind!r}")
    secret_keys = [key for key in context if _SECRET_KEY.search(key)]
    if secret_keys:
        raise ValueError(f"email {kind} refused: context names a secret ({secret_keys[0]})")
    full = {
        **context,
        "order": order,
        "user": order.user,
        "plan": order.plan,
        "order_url": order_url(order),
    }
    subject = " ".join(
        render_to_string(f"emails/{kind}_subject.txt", full).split()
    )  # one line: a newline in a header is an injection
    body = render_to_string(f"emails/{kind}.txt", full)
    return subject, body


def send_order_email(*, order: Order, kind: str, context: dict[str, Any]) -> bool:
    """Send the email `kind` about `order` to its owner. True if the backend took it; False when
    the owner has no address or the mail server failed (logged, not raised)."""
    recipient = order.user.email
    if not recipient:
        log.info(
            "event=order_email_skipped order_id=%s kind=%s reason=no_address", order.public_id, kind
        )
        return False
    subject, body = render_order_email(order=order, kind=kind, context=context)
    try:
        send_mail(subject, body, None, [recipient])
    except (OSError, smtplib.SMTPException) as exc:
        log.warning(
            "event=order_email_failed order_id=%s kind=%s error=%s",
            order.public_id,
            kind,
            type(exc).__name__,
        )
        return False
    log.info("event=order_email_sent order_id=%s kind=%s", order.public_id, kind)
    return True


def send_order_email_on_commit(*, order: Order, kind: str, context: dict[str, Any]) -> None:
    """`send_order_email` once the current transaction commits (at once outside one). The
    template is rendered now, so a bad kind or a secret in the context fails the caller's test,
    not a callback after the commit."""
    render_order_email(order=order, kind=kind, context=context)
    transaction.on_commit(lambda: send_order_email(order=order, kind=kind, context=context))


def send_email(*, to: str, kind: str, context: dict[str, Any]) -> bool:
    """An email that is about no order (the waitlist's "on sale again"): the same templates,
    rules and error handling as `send_order_email`, to the address given. True if sent."""
    if not _KIND.match(kind):
        raise ValueError(f"bad email kind {kind!r}")
    secret_keys = [key for key in context if _SECRET_KEY.search(key)]
    if secret_keys:
        raise ValueError(f"email {kind} refused: context names a secret ({secret_keys[0]})")
    full = {**context, "site_url": str(settings.SITE_URL).rstrip("/")}
    subject = " ".join(render_to_string(f"emails/{kind}_subject.txt", full).split())
    body = render_to_string(f"emails/{kind}.txt", full)
    try:
        send_mail(subject, body, None, [to])
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("event=email_failed kind=%s error=%s", kind, type(exc).__name__)
        return False
    log.info("event=email_sent kind=%s", kind)
    return True
