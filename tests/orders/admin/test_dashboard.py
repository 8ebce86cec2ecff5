"""The staff dashboard on the admin's front page: right numbers for a seeded data set, each link
listing as many rows as its number, a fixed number of queries, readable at phone width."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Page

from orders.admin.dashboard import dashboard
from orders.models import Alarm, DeadLetter, Host, Instance, Order
from store.management.commands.seed_plans import seed_plans
from store.models import Plan
from tests.orders.conftest import provision
from tests.orders.web.test_pages_browser import _chromium

pytestmark = pytest.mark.django_db

FIGURE = re.compile(r'data-figure="([^"]+)"><a href="([^"]+)">([^<]+)</a>')


def _orders(plan: Plan, status: str, n: int, instance_status: str = "") -> list[Instance]:
    out = []
    for _ in range(n):
        user = get_user_model().objects.create_user(f"u{Order.objects.count()}", "u@example.com")
        instance = provision(Order.objects.create(user=user, plan=plan))
        assert instance is not None
        Order.objects.filter(pk=instance.order_id).update(status=status)
        if instance_status:
            Instance.objects.filter(pk=instance.pk).update(status=instance_status)
        out.append(instance)
    return out


def _host(host_id: str, *, free_slots: int = 1, draining: bool = False, age_s: int = 0) -> None:
    Host.objects.create(
        host_id=host_id,
        last_heartbeat_at=timezone.now() - timedelta(seconds=age_s),
        capacity=4,
        free_slots=free_slots,
        draining=draining,
    )


def seed() -> None:
    seed_plans()
    bunny, hare, warren = (Plan.objects.get(slug=s) for s in ("bunny", "hare", "warren"))
    running = _orders(bunny, "ready", 2, "ready") + _orders(hare, "ready", 1, "ready")
    _orders(bunny, "past_due", 1, "ready")  # runs, but pays nothing this month
    _orders(warren, "paid", 1)  # paying, its server on the way: in MRR, not running
    (waiting,) = _orders(warren, "paid", 1)
    Instance.objects.filter(pk=waiting.pk).update(unplaced_since=timezone.now())
    _orders(hare, "failed", 2, "failed")
    _orders(bunny, "cancelled", 1, "deleted")
    _orders(bunny, "pending_payment", 1)
    _host("host-free", free_slots=2)
    _host("host-full", free_slots=0)
    _host("host-draining", draining=True)
    _host("host-silent", age_s=3600)
    for instance, status in ((running[0], "firing"), (running[1], "firing"), (running[2], "ok")):
        Alarm.objects.create(instance=instance, kind="memory", duration_s=60, status=status)
    for age in (timedelta(hours=1), timedelta(hours=23), timedelta(days=2)):
        DeadLetter.objects.create(reason="x", rejected_by="shop", result="r")
        DeadLetter.objects.filter(pk=DeadLetter.objects.latest("id").pk).update(
            received_at=timezone.now() - age
        )


def _figures(page: str) -> dict[str, tuple[str, str]]:
    return {key: (value, url.replace("&amp;", "&")) for key, url, value in FIGURE.findall(page)}


def test_the_admin_opens_on_the_right_numbers_and_each_links_to_as_many_rows(admin_client):
    seed()
    page = admin_client.get(reverse("admin:index")).content.decode()
    figures = _figures(page)
    ids = {p.slug: p.pk for p in Plan.objects.all()}
    values = {key: value for key, (value, _url) in figures.items()}
    assert values == {
        f"running-{ids['bunny']}": "3",  # two ready and the past-due one
        f"running-{ids['hare']}": "1",
        # ready 2 x 9 + 1 x 19, paid 2 x 49: the monthly prices of the orders paying now
        "mrr-usd": "135.00 USD",
        "waiting": "1",
        "failed": "2",
        "hosts-free": "1",
        "alarms": "2",
        "dead-letters": "2",
    }
    assert "from 5 orders" in page
    assert "Site administration" in page  # the models' list is still there, below
    counts = {"mrr-usd": 5}
    for key, (value, url) in figures.items():
        listing = admin_client.get(url)
        assert listing.status_code == 200, (key, url)
        expected = counts[key] if key in counts else int(value)
        assert listing.context["cl"].result_count == expected, (key, url)


def test_with_nothing_yet_every_number_is_zero_and_no_plan_is_listed(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    figures = _figures(page)
    assert {k: v for k, (v, _u) in figures.items()} == {
        "mrr-none": "0",
        "waiting": "0",
        "failed": "0",
        "hosts-free": "0",
        "alarms": "0",
        "dead-letters": "0",
    }
    assert "none running" in page


def test_the_numbers_take_the_same_queries_for_ten_times_the_rows():
    seed()
    now = timezone.now()
    with CaptureQueriesContext(connection) as small:
        dashboard(now)
    bunny = Plan.objects.get(slug="bunny")
    _orders(bunny, "ready", 20, "ready")
    _orders(Plan.objects.get(slug="hare"), "failed", 10, "failed")
    with CaptureQueriesContext(connection) as large:
        figures = dashboard(now)
    assert len(large) == len(small) <= 8
    assert {f.key: f.value for f in figures["running"]}[f"running-{bunny.pk}"] == "23"


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    yield from _chromium(tmp_path, monkeypatch, javascript=True)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_dashboard_fits_a_phone(live_server: Any, page: Page, admin_user: Any) -> None:
    seed()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}{reverse('admin:login')}")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    page.wait_for_selector("#staff-dashboard")
    too_wide = page.evaluate(
        """() => [...document.querySelectorAll('#staff-dashboard *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .map(e => e.outerHTML.slice(0, 80))"""
    )
    assert too_wide == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.click('[data-figure="alarms"] a')
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list tbody tr").count() == 2
