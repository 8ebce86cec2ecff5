"""A page never fails on stored data (issue 20): an odd URL a host once sent, or one written by
hand, is in the database; the order page, its status poll and the admin still answer 200, and
the URL is shown only when it passes the contract's rule (vmbackend/protocol/urls.py)."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from orders.models import Instance, Order

pytestmark = pytest.mark.django_db

GOOD_AMQP = "amqp://warren-abc@127.0.0.1:5701/"
GOOD_HTTP = "http://127.0.0.1:15001/"
BAD = [
    "amqp://warren-abc@127.0.0.1:99999/",
    "amqp://warren-abc:s3cr3tword@127.0.0.1:99999/",
    "http://[::1/",
    "javascript:alert(1)",
    'http://x/"><script>alert(1)</script>',
    "amqp://warren-abc@mq.attacker example/",
]


def _ready(instance: Instance, *, amqp_url: str, management_url: str) -> None:
    Order.objects.filter(pk=instance.order.pk).update(
        status=Order.Status.READY, paid_at=timezone.now()
    )
    Instance.objects.filter(pk=instance.pk).update(
        status=Instance.Status.READY, amqp_url=amqp_url, management_url=management_url
    )


@pytest.mark.parametrize("bad", BAD)
def test_the_order_page_answers_with_a_bad_url_hidden(client, customer, instance, bad):
    _ready(instance, amqp_url=bad, management_url=bad)
    client.force_login(customer)
    page = client.get(reverse("orders:detail", args=[instance.order.public_id]))
    poll = client.get(reverse("orders:status", args=[instance.order.public_id]))

    assert page.status_code == 200 and poll.status_code == 200
    for html in (page.content.decode(), poll.content.decode()):
        assert "99999" not in html and "s3cr3tword" not in html
        assert "javascript:" not in html and "<script>alert" not in html
        assert "attacker" not in html
    assert "not available (please contact us)" in page.content.decode()


def test_good_urls_are_still_shown(client, customer, instance):
    _ready(instance, amqp_url=GOOD_AMQP, management_url=GOOD_HTTP)
    client.force_login(customer)
    html = client.get(reverse("orders:detail", args=[instance.order.public_id])).content.decode()
    assert GOOD_AMQP in html and f'href="{GOOD_HTTP}"' in html


@pytest.mark.parametrize("bad", BAD)
def test_the_admin_answers_with_a_bad_url(admin_client, instance, bad):
    _ready(instance, amqp_url=bad, management_url=bad)
    for url in (
        reverse("admin:orders_instance_changelist"),
        reverse("admin:orders_instance_change", args=[instance.pk]),
        reverse("admin:orders_order_change", args=[instance.order.pk]),
    ):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert "<script>alert" not in response.content.decode()
