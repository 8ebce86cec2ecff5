"""The offline payment stand-in: a signed event applied in-process by the webhook workflow."""

from __future__ import annotations

import select
import socket
from unittest import mock

import pytest
from django.urls import reverse

from orders.billing.offline_checkout import (
    OfflinePaymentError,
    OfflinePaymentsDisabled,
    complete_offline_payment,
    offline_payments_enabled,
)
from orders.models import Order, OutboxMessage, WebhookEvent


def test_offline_payments_are_on_without_a_stripe_key(settings):
    settings.STRIPE_SECRET_KEY = ""

    assert offline_payments_enabled() is True


@pytest.mark.django_db
def test_offline_payment_is_refused_when_a_stripe_key_is_set(order, settings):
    settings.STRIPE_SECRET_KEY = "sk_live_real"

    with pytest.raises(OfflinePaymentsDisabled):
        complete_offline_payment(order=order)

    assert offline_payments_enabled() is False
    assert Order.objects.get(pk=order.pk).status == Order.Status.PENDING_PAYMENT
    assert not WebhookEvent.objects.exists()


@pytest.mark.django_db
def test_it_pays_through_the_webhook_workflow(order, settings):
    settings.STRIPE_SECRET_KEY = ""

    result = complete_offline_payment(order=order)

    assert result.result == WebhookEvent.Result.PROCESSED
    order = Order.objects.get(pk=order.pk)
    assert order.status == Order.Status.PAID
    assert order.stripe_subscription_id.startswith("sub_test_")
    assert order.stripe_checkout_session_id.startswith("cs_test_")
    receipt = WebhookEvent.objects.get()
    assert receipt.stripe_event_id.startswith("evt_")
    assert (receipt.type, receipt.livemode, receipt.result) == (
        "checkout.session.completed",
        False,
        WebhookEvent.Result.PROCESSED,
    )
    assert OutboxMessage.objects.filter(routing_key="create-vm").count() == 1


@pytest.mark.django_db
def test_the_event_goes_through_the_real_signature_check(order, settings):
    settings.STRIPE_SECRET_KEY = ""

    # The stripe library's verification runs on what the stand-in signed.
    with mock.patch(
        "stripe.WebhookSignature.verify_header",
        wraps=__import__("stripe").WebhookSignature.verify_header,
    ) as verify:
        complete_offline_payment(order=order)

    verify.assert_called_once()
    assert Order.objects.get(pk=order.pk).status == Order.Status.PAID


@pytest.mark.django_db
def test_a_refused_event_is_an_error(order, settings, monkeypatch):
    settings.STRIPE_SECRET_KEY = ""
    # A signature the workflow refuses: the stand-in signs with one secret, the check uses another.
    monkeypatch.setattr(
        "orders.billing.offline_checkout.sign_payload", lambda payload, **kw: "t=1,v1=00"
    )

    with pytest.raises(OfflinePaymentError, match="signature"):
        complete_offline_payment(order=order)

    assert Order.objects.get(pk=order.pk).status == Order.Status.PENDING_PAYMENT
    assert not WebhookEvent.objects.exists()


@pytest.mark.django_db
def test_a_hostile_host_header_sends_nothing_anywhere(client, order, settings):
    settings.STRIPE_SECRET_KEY = ""
    client.force_login(order.user)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]

        response = client.post(
            reverse("orders:offline_checkout", args=[order.public_id]),
            HTTP_HOST=f"127.0.0.1:{port}",
        )

        readable, _, _ = select.select([listener], [], [], 0.5)
        assert readable == [], "the shop connected to the port named in the Host header"
    assert response.status_code == 302
    assert Order.objects.get(pk=order.pk).status == Order.Status.PAID
