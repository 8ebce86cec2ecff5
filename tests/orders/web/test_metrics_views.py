"""The order page's metrics and alarms (orders/web/monitoring.py: detail, metrics, alarm_add,
alarm_remove). Personas: the owner, another customer, a stranger."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orders.models import Alarm, Instance, Order
from orders.monitoring import metrics
from tests.orders.monitoring.test_metrics import sample

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready(instance: Instance) -> Instance:
    Instance.objects.filter(pk=instance.pk).update(
        status=Instance.Status.READY, host_id="host-a", ready_at=timezone.now()
    )
    Order.objects.filter(pk=instance.order_id).update(status=Order.Status.READY)
    instance.refresh_from_db()
    return instance


@pytest.fixture
def owner_client(customer: Any) -> Client:
    client = Client()
    client.force_login(customer)
    return client


def feed(instance: Instance, *values: dict[str, Any]) -> None:
    now = timezone.now()
    for i, v in enumerate(values):
        at = now - timedelta(seconds=30 * (len(values) - i))
        metrics.apply_metrics(
            instance_id=instance.public_id, host_id="host-a", at=at, metrics=sample(**v)
        )


def test_the_owner_sees_graphs_and_latest_values(ready, owner_client):
    feed(ready, {"messages_ready": 1000}, {"messages_ready": 1234, "messages_unacked": 5})
    page = owner_client.get(reverse("orders:detail", args=[ready.order.public_id]))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="metric-messages-queued">1,239<' in html
    assert 'id="metric-memory">100.0 MiB / 400.0 MiB<' in html
    for chart in ("queued", "rates", "connections", "memory", "disk"):
        assert f'id="chart-{chart}"' in html
    queued = re.search(r'id="chart-queued".*?</svg>', html, re.S)
    assert queued is not None
    lines = re.findall(
        r'<polyline [^>]*data-series="queued \(ready \+ unacked\)" points="([^"]+)"', queued.group()
    )
    assert len(lines) == 1 and len(lines[0].split()) == 2
    assert 'viewBox="0 0 480 220" width="100%"' in html
    # The alarms section with the three defaults and the form.
    assert len(re.findall(r'<li id="alarm-\d+" data-kind="', html)) == 3
    assert 'id="alarm-form"' in html


def test_the_range_is_a_get_parameter(ready, owner_client):
    feed(ready, {})
    url = reverse("orders:detail", args=[ready.order.public_id])
    html = owner_client.get(url + "?range=7d").content.decode()
    assert '<strong aria-current="true" data-range="7d">' in html
    assert 'data-range="7d"' in html
    # Anything else is the default (1 h).
    html = owner_client.get(url + "?range=<script>").content.decode()
    assert '<strong aria-current="true" data-range="1h">' in html
    assert '<script>"' not in html


def test_a_server_not_answering_is_said_with_its_time(ready, owner_client):
    feed(ready, {}, {"reachable": False}, {"reachable": False})
    since = metrics.unreachable_since(ready, metrics.latest_sample(ready))
    assert since is not None
    html = owner_client.get(reverse("orders:detail", args=[ready.order.public_id])).content.decode()
    assert f"Server not answering since {since:%H:%M} UTC" in html
    assert 'id="metric-messages-queued">-<' in html


def test_the_fragment_for_the_pages_script(ready, owner_client):
    feed(ready, {"connections": 42})
    answer = owner_client.get(
        reverse("orders:metrics", args=[ready.order.public_id]) + "?range=24h"
    )
    data = answer.json()
    assert answer.status_code == 200 and data["range"] == "24h"
    assert 'id="metric-connections">42<' in data["metrics"]
    assert 'data-kind="unreachable"' in data["alarms"]
    assert "no-cache" in answer["Cache-Control"]


def test_no_metrics_section_before_the_server_was_ready(instance, owner_client):
    html = owner_client.get(reverse("orders:detail", args=[instance.order.public_id])).content
    assert b'id="metrics"' not in html
    answer = owner_client.get(reverse("orders:metrics", args=[instance.order.public_id]))
    assert answer.status_code == 404


def test_the_owner_adds_and_removes_an_alarm(ready, owner_client):
    url = reverse("orders:alarm_add", args=[ready.order.public_id])
    answer = owner_client.post(url, {"kind": "queue_depth", "threshold": "5000", "minutes": "3"})
    assert answer.status_code == 302 and answer["Location"].endswith("#alarms")
    alarm = Alarm.objects.get(instance=ready, is_default=False)
    assert (alarm.kind, alarm.threshold, alarm.duration_s) == ("queue_depth", 5000, 180)
    page = owner_client.get(answer["Location"]).content.decode()
    assert "Messages queued above 5000 for 3 min" in page
    remove = reverse("orders:alarm_remove", args=[ready.order.public_id, alarm.pk])
    assert owner_client.post(remove).status_code == 302
    assert not Alarm.objects.filter(pk=alarm.pk).exists()


@pytest.mark.parametrize(
    "form, message",
    [
        ({"kind": "queue_depth", "threshold": "x", "minutes": "3"}, "must be numbers"),
        ({"kind": "memory", "threshold": "1", "minutes": "3"}, "Choose what"),
        ({"kind": "connections", "threshold": "1", "minutes": "99999"}, "duration"),
        ({"kind": "connections", "threshold": "nan", "minutes": "1"}, "threshold"),
    ],
)
def test_a_bad_alarm_is_refused_with_the_reason(ready, owner_client, form, message):
    url = reverse("orders:alarm_add", args=[ready.order.public_id])
    page = owner_client.post(url, form, follow=True).content.decode()
    assert message in page
    assert not Alarm.objects.filter(instance=ready, is_default=False).exists()


def test_other_customers_and_strangers_get_nothing(ready):
    other = Client()
    other.force_login(get_user_model().objects.create_user("mallory", "m@example.com", "pw"))
    public = ready.order.public_id
    alarms_url = reverse("orders:alarm_add", args=[public])
    form = {"kind": "connections", "threshold": "1", "minutes": "1"}
    assert other.get(reverse("orders:metrics", args=[public])).status_code == 404
    assert other.post(alarms_url, form).status_code == 404
    mine = Alarm.objects.create(instance=ready, kind="connections", threshold=1, duration_s=60)
    assert other.post(reverse("orders:alarm_remove", args=[public, mine.pk])).status_code == 404
    assert Alarm.objects.filter(pk=mine.pk).exists()
    stranger = Client()
    assert stranger.get(reverse("orders:metrics", args=[public])).status_code == 302
    assert stranger.post(alarms_url, form).status_code == 302
    assert Alarm.objects.filter(instance=ready).count() == 1


def test_the_alarm_form_needs_the_csrf_token(ready, customer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    url = reverse("orders:alarm_add", args=[ready.order.public_id])
    answer = client.post(url, {"kind": "connections", "threshold": "1", "minutes": "1"})
    assert answer.status_code == 403
    assert client.get(url).status_code == 405
    assert not Alarm.objects.filter(instance=ready).exists()


def test_a_repeated_click_adds_the_alarm_once(ready, owner_client):
    url = reverse("orders:alarm_add", args=[ready.order.public_id])
    form = {"kind": "connections", "threshold": "50", "minutes": "2"}
    assert owner_client.post(url, form).status_code == 302
    assert owner_client.post(url, form).status_code == 302
    assert Alarm.objects.filter(instance=ready, is_default=False).count() == 1
    owner_client.post(url, form | {"threshold": "60"})
    assert Alarm.objects.filter(instance=ready, is_default=False).count() == 2


def test_values_from_a_host_that_stopped_reporting_are_marked_as_old(ready, owner_client):
    old = timezone.now() - timedelta(minutes=10)
    metrics.apply_metrics(instance_id=ready.public_id, host_id="host-a", at=old, metrics=sample())
    html = owner_client.get(reverse("orders:detail", args=[ready.order.public_id])).content.decode()
    assert f"No measurements from your server since {timezone.localtime(old):%H:%M} UTC" in html
    feed(ready, {})
    html = owner_client.get(reverse("orders:detail", args=[ready.order.public_id])).content.decode()
    assert 'id="metrics-stale"' not in html
