"""The offline payment stand-in: a signed event POSTed over HTTP to the shop's own webhook URL."""

from __future__ import annotations

from unittest import mock

import pytest
from django.urls import reverse

from orders.models import Order, OutboxMessage, WebhookEvent
from orders.offline_checkout import (
    OfflinePaymentError,
    OfflinePaymentsDisabled,
    complete_offline_payment,
    offline_payments_enabled,
)
from tests.net import free_port


def test_offline_payments_are_on_without_a_stripe_key(settings):
    settings.STRIPE_SECRET_KEY = ""

    assert offline_payments_enabled() is True


@pytest.mark.django_db
def test_offline_payment_is_refused_when_a_stripe_key_is_set(order, settings):
    settings.STRIPE_SECRET_KEY = "sk_live_real"

    with mock.patch("urllib.request.urlopen") as urlopen:
        with pytest.raises(OfflinePaymentsDisabled):
            complete_offline_payment(
                order=order, webhook_url="http://127.0.0.1:1/orders/webhooks/stripe/"
            )

    assert offline_payments_enabled() is False
    urlopen.assert_not_called()
    assert Order.objects.get(pk=order.pk).status == Order.Status.PENDING_PAYMENT


@pytest.mark.django_db(transaction=True)
def test_it_pays_through_the_real_webhook_endpoint(order, live_server, settings):
    settings.STRIPE_SECRET_KEY = ""

    status = complete_offline_payment(
        order=order, webhook_url=live_server.url + reverse("orders:stripe_webhook")
    )

    assert status == 200
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


@pytest.mark.django_db(transaction=True)
def test_a_refused_event_is_an_error(order, live_server, settings):
    settings.STRIPE_SECRET_KEY = ""

    with pytest.raises(OfflinePaymentError, match="404"):
        complete_offline_payment(order=order, webhook_url=live_server.url + "/no-such-endpoint/")

    assert Order.objects.get(pk=order.pk).status == Order.Status.PENDING_PAYMENT


@pytest.mark.django_db
def test_an_unreachable_endpoint_is_an_error(order, settings):
    settings.STRIPE_SECRET_KEY = ""
    port = free_port()  # nobody listens there

    with pytest.raises(OfflinePaymentError, match="unreachable"):
        complete_offline_payment(order=order, webhook_url=f"http://127.0.0.1:{port}/")


@pytest.mark.django_db
def test_only_http_urls_are_posted_to(order, settings):
    settings.STRIPE_SECRET_KEY = ""

    with pytest.raises(OfflinePaymentError):
        complete_offline_payment(order=order, webhook_url="file:///etc/passwd")
