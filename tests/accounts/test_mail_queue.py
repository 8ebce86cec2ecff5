"""Email leaves through a queue in the database: no request waits for the mail server, and a mail
the server refuses stays queued and is retried (accounts/mail_queue.py).

Django's test runner replaces EMAIL_BACKEND with its in-memory one (mail.outbox) for every other
test; the tests here put the queue back in front of it, as production runs.
"""

from __future__ import annotations

import logging
import smtplib
import statistics
import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, EmailMultiAlternatives, send_mail
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import mail_queue
from accounts.models import QueuedEmail
from tests.accounts.slow_mail import SECONDS_PER_MESSAGE
from tests.net import free_port

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-42"
QUEUE = "accounts.mail_queue.QueueBackend"
SLOW = "tests.accounts.slow_mail.SlowEmailBackend"
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
ROUNDS = 5


@pytest.fixture
def queued(settings) -> None:
    settings.EMAIL_BACKEND = QUEUE
    settings.MAIL_DELIVERY_BACKEND = LOCMEM


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: an SMTP server that is down."""
    return free_port()


def _timed(post) -> float:
    started = time.perf_counter()
    response = post()
    elapsed = time.perf_counter() - started
    assert response.status_code == 302
    return elapsed


def _signup(username: str, email: str):
    data = {"username": username, "email": email, "password1": PASSWORD, "password2": PASSWORD}
    return lambda: Client().post(reverse("signup"), data)


def _reset(email: str):
    return lambda: Client().post(reverse("password_reset"), {"email": email})


def test_a_known_address_answers_as_fast_as_a_new_one_with_a_slow_mail_server(settings) -> None:
    # The mail server takes 0.3 s a message, as SMTP does: when the request sent the mail, a
    # known address answered 0.3 s (sign-up) and 0.6 s (reset) slower than a new one.
    settings.EMAIL_BACKEND = QUEUE
    settings.MAIL_DELIVERY_BACKEND = SLOW
    users = get_user_model().objects
    for n in range(ROUNDS):
        users.create_user(f"owner{n}", f"known{n}@example.com", PASSWORD)
        users.create_user(f"resetter{n}", f"reset{n}@example.com", PASSWORD)

    signup_new = [_timed(_signup(f"new{n}", f"new{n}@example.com")) for n in range(ROUNDS)]
    signup_known = [_timed(_signup(f"dup{n}", f"known{n}@example.com")) for n in range(ROUNDS)]
    reset_unknown = [_timed(_reset(f"nobody{n}@example.com")) for n in range(ROUNDS)]
    reset_known = [_timed(_reset(f"reset{n}@example.com")) for n in range(ROUNDS)]

    median = statistics.median
    print(
        f"signup new {median(signup_new):.3f}s known {median(signup_known):.3f}s; "
        f"reset unknown {median(reset_unknown):.3f}s known {median(reset_known):.3f}s"
    )
    assert abs(median(signup_known) - median(signup_new)) < SECONDS_PER_MESSAGE / 3
    assert abs(median(reset_known) - median(reset_unknown)) < SECONDS_PER_MESSAGE / 3
    assert mail.outbox == []  # nothing was delivered inside a request
    assert QueuedEmail.objects.count() == 2 * ROUNDS

    assert mail_queue.deliver_due() == 2 * ROUNDS

    assert QueuedEmail.objects.count() == 0
    by_subject: dict[str, list[str]] = {}
    for message in mail.outbox:
        by_subject.setdefault(message.subject, []).extend(message.to)
    assert sorted(by_subject["Another Warren account uses your email address"]) == [
        f"known{n}@example.com" for n in range(ROUNDS)
    ]
    assert sorted(by_subject["Reset your Warren password"]) == [
        f"reset{n}@example.com" for n in range(ROUNDS)
    ]
    reset = next(m for m in mail.outbox if m.to == ["reset0@example.com"])
    assert "/accounts/reset/" in reset.body


def test_a_mail_the_server_refuses_stays_queued_and_is_retried(
    settings, closed_port: int, caplog
) -> None:
    settings.EMAIL_BACKEND = QUEUE
    settings.MAIL_DELIVERY_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port, 5
    send_mail("Your server is ready", "body", None, ["alice@example.com"])
    started = timezone.now()

    with caplog.at_level(logging.WARNING, logger="accounts.mail_queue"):
        assert mail_queue.deliver_due(now=started) == 0

    row = QueuedEmail.objects.get()
    assert row.attempts == 1
    assert "ConnectionRefusedError" in row.last_error
    assert row.next_attempt_at == started + timedelta(seconds=30)
    assert row.given_up_at is None
    assert f"event=mail_failed mail_id={row.pk} attempts=1" in caplog.text
    # Not due yet: a down server is not hammered.
    assert mail_queue.deliver_due(now=started + timedelta(seconds=29)) == 0
    assert QueuedEmail.objects.get().attempts == 1
    # Down again at the retry: the next wait doubles.
    assert mail_queue.deliver_due(now=started + timedelta(seconds=30)) == 0
    row = QueuedEmail.objects.get()
    assert (row.attempts, row.next_attempt_at) == (2, started + timedelta(seconds=90))

    settings.MAIL_DELIVERY_BACKEND = LOCMEM  # the server is back
    assert mail_queue.deliver_due(now=started + timedelta(seconds=90)) == 1

    assert not QueuedEmail.objects.exists()
    [message] = mail.outbox
    assert (message.subject, message.to) == ("Your server is ready", ["alice@example.com"])


def test_a_mail_still_refused_after_the_give_up_time_is_kept_and_logged(
    settings, closed_port: int, caplog
) -> None:
    settings.EMAIL_BACKEND = QUEUE
    settings.MAIL_DELIVERY_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", closed_port
    settings.MAIL_GIVE_UP_SECONDS = 3600
    send_mail("Reset your Warren password", "body", None, ["alice@example.com"])
    later = QueuedEmail.objects.get().created_at + timedelta(hours=1)

    with caplog.at_level(logging.ERROR, logger="accounts.mail_queue"):
        assert mail_queue.deliver_due(now=later) == 0

    row = QueuedEmail.objects.get()
    assert row.given_up_at == later
    assert "event=mail_given_up" in caplog.text
    settings.MAIL_DELIVERY_BACKEND = LOCMEM
    assert mail_queue.deliver_due(now=later + timedelta(days=1)) == 0
    assert mail.outbox == []


def test_retry_delays_double_up_to_an_hour() -> None:
    delays = [mail_queue.retry_delay(n).total_seconds() for n in (1, 2, 3, 7, 8, 50)]
    assert delays == [30, 60, 120, 1920, 3600, 3600]


class _SecondSenderBackend(mail.backends.locmem.EmailBackend):
    """Delivers, and meanwhile a second sender runs a pass over the same queue."""

    second_pass: list[int] = []

    def send_messages(self, messages):  # type: ignore[no-untyped-def]
        _SecondSenderBackend.second_pass.append(mail_queue.deliver_due())
        return super().send_messages(messages)


def test_a_mail_being_sent_is_not_sent_by_a_second_sender(settings, queued) -> None:
    settings.MAIL_DELIVERY_BACKEND = f"{__name__}._SecondSenderBackend"
    _SecondSenderBackend.second_pass = []
    send_mail("Hello", "body", None, ["alice@example.com"])

    assert mail_queue.deliver_due() == 1

    assert _SecondSenderBackend.second_pass == [0]
    assert len(mail.outbox) == 1


def test_the_queued_mail_is_the_mail_that_was_written(queued) -> None:
    message = EmailMultiAlternatives(
        "Sübject",
        "plain body",
        "Shop <shop@example.com>",
        ["to@example.com"],
        bcc=["bcc@example.com"],
        cc=["cc@example.com"],
        reply_to=["help@example.com"],
        headers={"X-Warren": "1"},
    )
    message.attach_alternative("<p>html body</p>", "text/html")
    message.send()

    mail_queue.deliver_due()

    [sent] = mail.outbox
    assert (sent.subject, sent.body, sent.from_email) == (
        "Sübject",
        "plain body",
        "Shop <shop@example.com>",
    )
    assert (sent.to, sent.cc, sent.bcc, sent.reply_to) == (
        ["to@example.com"],
        ["cc@example.com"],
        ["bcc@example.com"],
        ["help@example.com"],
    )
    assert sent.extra_headers["X-Warren"] == "1"
    assert "Date" in sent.extra_headers  # when it was written, not when a retry sent it
    assert [tuple(a) for a in sent.alternatives] == [("<p>html body</p>", "text/html")]


def test_an_attachment_is_refused_when_queued(queued) -> None:
    message = EmailMessage("s", "b", None, ["to@example.com"])
    message.attach("a.txt", "x", "text/plain")
    with pytest.raises(ValueError, match="attachments"):
        message.send()
    assert not QueuedEmail.objects.exists()


def test_the_queue_cannot_be_its_own_delivery_backend(settings, queued) -> None:
    settings.MAIL_DELIVERY_BACKEND = QUEUE
    send_mail("s", "b", None, ["to@example.com"])
    with pytest.raises(ImproperlyConfigured):
        mail_queue.deliver_due()
    assert QueuedEmail.objects.count() == 1


def test_the_command_sends_the_queue_once(queued, capsys) -> None:
    send_mail("s", "b", None, ["to@example.com"])

    call_command("send_queued_mail", "--once")

    assert "sent 1" in capsys.readouterr().out
    assert len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)  # the loop's thread has its own connection
def test_the_worker_loop_sends_what_is_queued_until_stopped(queued) -> None:
    stop = threading.Event()

    def loop() -> None:
        try:
            mail_queue.run(stop, poll=0.05)
        finally:
            connection.close()

    worker = threading.Thread(target=loop)
    send_mail("s", "b", None, ["to@example.com"])
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not mail.outbox and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive()
    assert [m.to for m in mail.outbox] == [["to@example.com"]]


def test_staff_see_the_queue_but_cannot_search_the_bodies(admin_client, queued) -> None:
    send_mail(
        "Reset your Warren password", "link: /accounts/reset/MQ/secret-token/", None, ["a@x.y"]
    )
    url = reverse("admin:accounts_queuedemail_changelist")

    listed = admin_client.get(url)
    waiting = admin_client.get(url, {"given_up_at__isempty": "1"})
    oracle = admin_client.get(url, {"body__regex": "secret"})

    assert listed.status_code == waiting.status_code == 200
    assert b"Reset your Warren password" in listed.content and b"secret-token" not in listed.content
    assert oracle.status_code == 400
    row = QueuedEmail.objects.get()
    detail = admin_client.get(reverse("admin:accounts_queuedemail_change", args=[row.pk]))
    assert detail.status_code == 200 and b"secret-token" not in detail.content


class _MultiLineRefusal(mail.backends.locmem.EmailBackend):
    def send_messages(self, messages):  # type: ignore[no-untyped-def]
        raise smtplib.SMTPServerDisconnected("refused\nts=forged level=INFO event=mail_sent")


def test_a_refusal_is_logged_on_one_line(settings, queued, caplog) -> None:
    settings.MAIL_DELIVERY_BACKEND = f"{__name__}._MultiLineRefusal"
    send_mail("s", "b", None, ["to@example.com"])

    with caplog.at_level(logging.WARNING, logger="accounts.mail_queue"):
        assert mail_queue.deliver_due() == 0

    [record] = [r for r in caplog.records if "event=mail_failed" in r.getMessage()]
    assert "\n" not in record.getMessage()
    assert "\n" not in QueuedEmail.objects.get().last_error
