"""orders/core/emails.py: the owner's emails, through Django's locmem outbox (the real backend
API)."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from django.core import mail
from django.db import transaction
from django.template import TemplateDoesNotExist

from orders.core.emails import order_url, send_order_email, send_order_email_on_commit
from orders.models import Order


@pytest.fixture(autouse=True)
def _locmem(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.SITE_URL = "https://shop.example/"


def test_it_sends_the_kind_to_the_owner_with_the_order_url(order: Order) -> None:
    sent = send_order_email(
        order=order,
        kind="server_ready",
        context={"management_url": "http://127.0.0.1:20001/", "amqp_url": "amqp://u@h:1/"},
    )

    assert sent is True
    [email] = mail.outbox
    assert email.to == ["alice@example.com"]
    assert email.subject == "Your RabbitMQ server (Test small) is ready"
    assert "http://127.0.0.1:20001/" in email.body
    assert f"https://shop.example/orders/{order.public_id}/" in email.body
    assert order_url(order) == f"https://shop.example/orders/{order.public_id}/"


def test_it_never_puts_a_password_in_an_email(order: Order) -> None:
    with pytest.raises(ValueError, match="secret"):
        send_order_email(order=order, kind="server_ready", context={"admin_password": "x"})
    assert mail.outbox == []


@pytest.mark.parametrize("kind", ["../base", "Server", "", "a" * 60, "x.y"])
def test_it_refuses_a_malformed_kind(order: Order, kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        send_order_email(order=order, kind=kind, context={})


def test_an_unknown_kind_is_a_missing_template(order: Order) -> None:
    with pytest.raises(TemplateDoesNotExist):
        send_order_email(order=order, kind="no_such_email", context={})


def test_an_owner_without_an_address_gets_nothing(order: Order) -> None:
    order.user.email = ""
    order.user.save()

    assert send_order_email(order=order, kind="server_ready", context={}) is False
    assert mail.outbox == []


def test_a_mail_server_error_is_logged_not_raised(
    order: Order, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise smtplib.SMTPServerDisconnected("gone")

    monkeypatch.setattr("orders.core.emails.send_mail", refuse)

    assert send_order_email(order=order, kind="server_ready", context={}) is False
    assert "event=order_email_failed" in caplog.text


def test_a_subject_stays_one_line(order: Order) -> None:
    order.plan.name = "Evil\r\nBcc: victim@example.com"
    order.plan.save()

    send_order_email(order=order, kind="server_ready", context={})

    assert "\n" not in mail.outbox[0].subject
    assert "\r" not in mail.outbox[0].subject


@pytest.mark.django_db(transaction=True)
def test_on_commit_sends_only_after_the_commit(order: Order) -> None:
    with transaction.atomic():
        send_order_email_on_commit(order=order, kind="server_ready", context={})
        assert mail.outbox == []
    assert len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_sends_nothing(order: Order) -> None:
    class Undo(Exception):
        pass

    with pytest.raises(Undo), transaction.atomic():
        send_order_email_on_commit(order=order, kind="server_ready", context={})
        raise Undo
    assert mail.outbox == []
