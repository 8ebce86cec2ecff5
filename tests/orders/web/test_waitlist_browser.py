"""Sold out and the waitlist in a real browser (headless Debian Chromium, Playwright) at phone
(390 px) and desktop widths, against the live server: a plan no live host fits shows "Sold out"
and a way to sign in and join its waitlist instead of a buy button (the address is the
account's: the shop mails no typed-in address); joining is confirmed on the page; when a host
has room again the waiting address gets its email and the plan is on sale again. A paid order
no host can take says so plainly on its order page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core import mail
from django.db import transaction
from playwright.sync_api import Page, expect

from orders.core.provisioning import request_provisioning
from orders.fleet import placement
from orders.fleet.waitlist import notify_waitlist
from orders.messaging.host_events import handle_message
from orders.models import Order, OutboxMessage
from store.models import Plan, WaitlistEntry
from tests.orders.web.test_pages_browser import _chromium, _shot

pytestmark = pytest.mark.browser

PASSWORD = "Tr0ub4dor-and-3-more-words"
WIDTHS = {"phone": (390, 844), "desktop": (1280, 900)}


@pytest.fixture(params=list(WIDTHS))
def page(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    for browser_page in _chromium(tmp_path, monkeypatch, javascript=True):
        width, height = WIDTHS[request.param]
        browser_page.set_viewport_size({"width": width, "height": height})
        browser_page.width_name = request.param  # type: ignore[attr-defined]
        yield browser_page


def _heartbeat(memory_used: int) -> None:
    body = {
        "version": 1,
        "type": "host.heartbeat",
        "host_id": "host-b",
        "seq": 1,
        "capacity": 10,
        "memory_total_mb": 4096,
        "memory_used_mb": memory_used,
        "vcpus_total": 8,
        "disk_total_gb": 100,
    }
    assert handle_message(json.dumps(body).encode()) == "applied"


def _plans() -> None:
    for slug, memory, order in (("bunny", 512, 1), ("warren", 2048, 2)):
        Plan.objects.create(
            slug=slug,
            name=slug.title(),
            memory_mb=memory,
            vcpus=1,
            disk_gb=4,
            max_connections=100,
            max_queues=100,
            monthly_price_cents=900 * order,
            sort_order=order,
        )


def _fits_the_width(page: Page) -> None:
    width = page.viewport_size["width"]  # type: ignore[index]
    assert page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_a_sold_out_plan_offers_the_waitlist_and_its_email_comes_when_room_appears(
    live_server, page: Page, django_user_model
) -> None:
    _plans()
    django_user_model.objects.create_user("wanda", "wanda@example.com", PASSWORD)
    _heartbeat(memory_used=3072)  # 1 GiB left: a Bunny fits, a Warren does not
    page.goto(f"{live_server.url}/")
    warren, bunny = page.locator("#plan-warren"), page.locator("#plan-bunny")
    expect(warren.locator(".sold-out")).to_contain_text("Sold out")
    expect(warren.get_by_text("Sign in to join the waitlist")).to_be_visible()
    expect(warren.get_by_text("Buy Warren")).to_have_count(0)
    expect(bunny.get_by_text("Buy Bunny")).to_be_visible()
    expect(bunny.locator(".sold-out")).to_have_count(0)
    _fits_the_width(page)
    _shot(page, f"fleet-sold-out-{page.width_name}")  # type: ignore[attr-defined]

    warren.get_by_text("Sign in to join the waitlist").click()
    page.fill("#id_username", "wanda")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    warren = page.locator("#plan-warren")
    expect(warren).to_contain_text("We will write to wanda@example.com.")
    warren.get_by_role("button", name="Join the waitlist").click()
    expect(page.locator(".messages")).to_contain_text(
        "You are on the waitlist for Warren: we will email you when it is available."
    )
    _fits_the_width(page)
    _shot(page, f"fleet-waitlist-joined-{page.width_name}")  # type: ignore[attr-defined]
    assert list(WaitlistEntry.objects.values_list("email", flat=True)) == ["wanda@example.com"]

    # A repeated click (back, submit again) is still one entry.
    page.go_back()
    page.locator("#plan-warren").get_by_role("button", name="Join the waitlist").click()
    expect(page.locator(".messages")).to_contain_text("You are on the waitlist for Warren")
    assert WaitlistEntry.objects.count() == 1

    _heartbeat(memory_used=0)  # a VM went away: room for a Warren
    assert notify_waitlist() == 1
    assert mail.outbox[-1].to == ["wanda@example.com"]
    page.reload()
    expect(page.locator("#plan-warren").get_by_text("Buy Warren")).to_be_visible()
    expect(page.locator("#plan-warren .sold-out")).to_have_count(0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_a_paid_order_no_host_has_room_for_says_so_on_its_page(
    live_server, page: Page, django_user_model
) -> None:
    _plans()
    _heartbeat(memory_used=4000)  # full: nothing fits
    user = django_user_model.objects.create_user("walt", "walt@example.com", PASSWORD)
    order = Order.objects.create(user=user, plan=Plan.objects.get(slug="bunny"))
    with transaction.atomic():
        request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))
    row = OutboxMessage.objects.get(instance__order=order)
    assert placement.route(row) == "create-vm"  # the relay's step: the shared queue

    page.goto(f"{live_server.url}/accounts/login/?next=/orders/{order.public_id}/")
    page.fill("#id_username", "walt")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("[data-activity=waiting_for_room]")).to_contain_text(
        "All our servers are full right now, so yours is waiting for room."
    )
    _fits_the_width(page)
    _shot(page, f"fleet-order-waiting-{page.width_name}")  # type: ignore[attr-defined]
