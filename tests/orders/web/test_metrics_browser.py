"""The order page's graphs and alarms in a real browser, at 390 px and at desktop width.

Samples are built with the contract's builder (messages.metrics_event), published to the real
broker and applied by the event worker, as a host's would be; the page (pytest-django's live
server, headless Debian chromium through Playwright) must show their numbers, refresh itself,
and show an alarm firing and clearing (and the owner gets both emails)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pika
import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from orders.messaging.consumer import EventConsumer
from orders.models import Alarm, Instance, Order
from orders.monitoring import metrics
from store.management.commands.seed_plans import seed_plans
from store.models import Plan
from tests.orders.monitoring.test_metrics import sample
from tests.orders.web.test_pages_browser import PASSWORD, _chromium, _shot
from vmbackend.protocol import messages

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    yield from _chromium(tmp_path, monkeypatch, javascript=True)


@pytest.fixture
def browser_without_js(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    yield from _chromium(tmp_path, monkeypatch, javascript=False)


def _ready_order(django_user_model: Any) -> Instance:
    seed_plans()
    user = django_user_model.objects.create_user("gina", "gina@example.com", PASSWORD)
    order = Order.objects.create(
        user=user,
        plan=Plan.objects.get(slug="hare"),
        status=Order.Status.READY,
        paid_at=timezone.now(),
    )
    return Instance.objects.create(
        order=order,
        status=Instance.Status.READY,
        host_id="host-a",
        ready_at=timezone.now() - timedelta(hours=1),
        management_url="http://127.0.0.1:15990/",
        amqp_url="amqp://warren-g1@127.0.0.1:5990/",
        admin_username="warren-g1",
        admin_password="vm-admin-secret-g1",
    )


def _publish_samples(
    channel: Any, url: str, instance: Instance, minutes_ago: float, *values: dict[str, Any]
) -> None:
    """Samples 30 s apart starting `minutes_ago`, through the broker and the event worker."""
    for i, v in enumerate(values):
        body = messages.metrics_event(
            instance_id=str(instance.public_id), host_id="host-a", metrics=sample(**v)
        )
        at = timezone.now() - timedelta(minutes=minutes_ago) + timedelta(seconds=30 * i)
        body["occurred_at"] = at.isoformat()
        channel.basic_publish(
            "warren.events",
            messages.INSTANCE_METRICS,
            json.dumps(body).encode(),
            pika.BasicProperties(content_type="application/json", delivery_mode=2, user_id="guest"),
        )
    counts = EventConsumer(url=url, idle_timeout=0.3).run(once=True)
    assert counts.get("recorded") == len(values), counts


def _log_in(page: Page, live_server: Any, instance: Instance) -> None:
    page.goto(f"{live_server.url}/accounts/login/?next=/orders/{instance.order.public_id}/")
    page.fill("#id_username", "gina")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")


@pytest.mark.timeout(240)
def test_the_graphs_show_the_published_numbers_and_an_alarm_fires_and_clears(
    live_server, browser: Page, django_user_model, amqp, orders_amqp_url, settings, mailoutbox
) -> None:
    page = browser
    settings.METRICS_REFRESH_SECONDS = 1
    instance = _ready_order(django_user_model)
    _publish_samples(
        amqp,
        orders_amqp_url,
        instance,
        20,
        {"messages_ready": 1200, "messages_unacked": 0},
        {"messages_ready": 1234, "messages_unacked": 0, "connections": 7},
        {"messages_ready": 1234, "messages_unacked": 0, "connections": 9, "publish_rate": 42.5},
    )

    page.set_viewport_size(PHONE)
    _log_in(page, live_server, instance)
    box = page.locator("#metrics")
    expect(box.locator("#metric-messages-queued")).to_have_text("1,234")
    expect(box.locator("#metric-connections")).to_have_text("9")
    expect(box.locator("#metric-publish-rate")).to_have_text("42.5/s")
    queued = box.locator("#chart-queued polyline").first
    assert len((queued.get_attribute("points") or "").split()) == 3
    assert box.locator("#chart-rates polyline").count() == 3  # publish, deliver, ack
    # Fits the phone: nothing wider than the viewport, the charts scale down to it.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    chart = box.locator("#chart-memory").bounding_box()
    assert chart is not None and chart["x"] >= 0 and chart["x"] + chart["width"] <= PHONE["width"]
    _shot(page, "metrics-1-phone")

    # The customer sets a queue-depth alarm with the form.
    page.select_option("#alarm-kind", "queue_depth")
    page.fill("#alarm-threshold", "1500")
    page.fill("#alarm-minutes", "1")
    page.click("#alarm-form button[type=submit]")
    mine = page.locator("li[data-kind=queue_depth]")
    expect(mine).to_contain_text("Messages queued above 1500 for 1 min")
    expect(mine).to_have_attribute("data-state", "ok")
    assert Alarm.objects.filter(instance=instance, kind="queue_depth").count() == 1

    # From here the page must update by itself.
    page.evaluate("window.__noReload = 'still here'")
    _publish_samples(
        amqp, orders_amqp_url, instance, 10, *[{"messages_ready": 2000, "messages_unacked": 0}] * 3
    )
    expect(mine).to_have_attribute("data-state", "firing")
    expect(mine).to_contain_text("since")
    expect(box.locator("#metric-messages-queued")).to_have_text("2,000")
    expect(page.locator("#alarm-history li[data-change=fired]")).to_have_count(1)
    _shot(page, "metrics-2-alarm-firing-phone")

    _publish_samples(
        amqp, orders_amqp_url, instance, 5, *[{"messages_ready": 10, "messages_unacked": 0}] * 3
    )
    expect(mine).to_have_attribute("data-state", "ok")
    expect(mine).to_contain_text("cleared")
    expect(page.locator("#alarm-history li[data-change=cleared]")).to_have_count(1)
    assert page.evaluate("window.__noReload") == "still here"
    subjects = [m.subject.split(":")[0] for m in mailoutbox]
    assert subjects == ["Alarm", "Cleared"]
    assert all(m.to == ["gina@example.com"] for m in mailoutbox)

    # Desktop: the same graphs, wider, with 9 points now, and the 24 h choice.
    page.set_viewport_size(DESKTOP)
    page.click("#metrics a[data-range='24h']")
    expect(page.locator("#metrics strong[data-range='24h']")).to_be_visible()
    chart = page.locator("#chart-queued").bounding_box()
    assert chart is not None and chart["width"] > 600
    assert page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]
    expect(page.locator("#metric-messages-queued")).to_have_text("10")
    _shot(page, "metrics-3-desktop")


@pytest.mark.timeout(120)
def test_without_javascript_the_latest_values_and_an_outage_are_readable(
    live_server, browser_without_js: Page, django_user_model, amqp, orders_amqp_url
) -> None:
    page = browser_without_js
    instance = _ready_order(django_user_model)
    _publish_samples(
        amqp,
        orders_amqp_url,
        instance,
        3,
        {"messages_ready": 77, "messages_unacked": 3},
        {"reachable": False},
        {"reachable": False},
    )
    page.set_viewport_size(PHONE)
    _log_in(page, live_server, instance)
    down = page.locator("#metrics-unreachable")
    expect(down).to_contain_text("Server not answering since")
    since = metrics.unreachable_since(instance, metrics.latest_sample(instance))
    assert since is not None
    expect(down).to_contain_text(f"{timezone.localtime(since):%H:%M} UTC")
    expect(page.locator("#metric-messages-queued")).to_have_text("-")
    # The queued line stops where the server stopped answering: one point (a dot).
    assert page.locator("#chart-queued circle[data-series^=queued]").count() == 1
    _shot(page, "metrics-4-unreachable-no-js")
