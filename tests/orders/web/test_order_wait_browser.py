"""The order page learns of "ready" from its long poll, woken on commit (orders/web/order_wait.py,
orders/lib/wakeup.py), in a real browser at phone and desktop width, without a reload. The ready
event goes through the event worker's own entry point (handle_message), as in production."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import transaction
from playwright.sync_api import Page, expect

from orders.core.provisioning import request_provisioning
from orders.lib import wakeup
from orders.models import Instance, Order
from orders.web import order_wait
from store.management.commands.seed_plans import seed_plans
from store.models import Plan
from tests.orders.console_support import apply, ready_fields
from tests.orders.web.test_pages_browser import _chromium
from vmbackend.protocol import messages

pytestmark = pytest.mark.browser

PASSWORD = "Tr0ub4dor-and-3-more-words"
WIDTHS = {"phone": (390, 844), "desktop": (1280, 900)}
BACKSTOP = 120.0  # the page's re-read and the long poll's length: only the wake-up is quicker
WAKE_MS = 15_000


@pytest.fixture(params=sorted(WIDTHS))
def page(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    for browser_page in _chromium(tmp_path, monkeypatch, javascript=True):
        width, height = WIDTHS[request.param]
        browser_page.set_viewport_size({"width": width, "height": height})
        yield browser_page
    wakeup.hub.stop()


def _provisioning_order(django_user_model) -> Instance:
    seed_plans()
    user = django_user_model.objects.create_user("dora", "dora@example.com", PASSWORD)
    order = Order.objects.create(user=user, plan=Plan.objects.get(slug="hare"))
    with transaction.atomic():
        instance = request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))
    assert instance is not None
    assert apply(instance, messages.INSTANCE_ACCEPTED, image="tiny") == "applied"
    assert apply(instance, messages.INSTANCE_PROGRESS, stage="rabbitmq_starting") == "applied"
    return instance


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_the_page_switches_to_ready_on_the_wake_up_without_a_reload(
    live_server, page: Page, settings, monkeypatch, django_user_model
) -> None:
    settings.ORDER_LONG_POLL_SECONDS = BACKSTOP
    monkeypatch.setattr(order_wait, "RECHECK_SECONDS", BACKSTOP)
    instance = _provisioning_order(django_user_model)
    order = instance.order
    waiting: list[str] = []
    page.on("request", lambda r: waiting.append(r.url) if "/status/?since=" in r.url else None)
    page.goto(f"{live_server.url}/accounts/login/?next=/orders/{order.public_id}/")
    page.fill("#id_username", "dora")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    state = page.locator("#order-state")
    expect(state.locator(".badge")).to_have_text("Provisioning")
    expect(state.locator("li.current[data-step=rabbitmq_starting]")).to_be_visible()
    page.evaluate("window.__samePage = 'yes'")
    # The page's long poll is waiting in the server now (or about to).
    for _ in range(200):
        if order_wait.waiting() == 1:
            break
        page.wait_for_timeout(50)
    assert order_wait.waiting() == 1

    assert apply(instance, messages.INSTANCE_READY, **ready_fields(instance)) == "applied"

    expect(state.locator(".badge")).to_have_text("Ready", timeout=WAKE_MS)
    expect(page.locator("#management-url")).to_have_attribute("href", "http://127.0.0.1:20001/")
    assert page.evaluate("window.__samePage") == "yes"  # no reload
    assert waiting, "the page never long-polled"
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
