"""The console in a real browser (headless Debian Chromium, Playwright) at phone (390 px) and
desktop widths: restart, password rotation, plan change and the timeline, each with its
confirmation page, a repeated submit, and a failure shown. The host's answers are real events
built with the contract's builder and applied through the event worker's entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import transaction
from playwright.sync_api import Page, expect

from orders.core.provisioning import request_provisioning
from orders.models import ConsoleCommand, Instance, Order, OutboxMessage
from store.management.commands.seed_plans import seed_plans
from store.models import Plan
from tests.orders.console_support import make_ready, outcome
from tests.orders.web.test_pages_browser import _chromium, _shot
from vmbackend.protocol import messages

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


@pytest.fixture
def page_without_js(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    for browser_page in _chromium(tmp_path, monkeypatch, javascript=False):
        browser_page.set_viewport_size({"width": 390, "height": 844})
        yield browser_page


def _ready_order(django_user_model, username: str) -> Instance:
    seed_plans()
    user = django_user_model.objects.create_user(username, f"{username}@example.com", PASSWORD)
    order = Order.objects.create(user=user, plan=Plan.objects.get(slug="hare"))
    with transaction.atomic():
        instance = request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))
    assert instance is not None
    return make_ready(instance)


def _log_in(page: Page, live_server, instance: Instance) -> None:
    order = instance.order
    page.goto(f"{live_server.url}/accounts/login/?next=/orders/{order.public_id}/")
    page.fill("#id_username", order.user.get_username())
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#console")).to_be_visible()


def _fits(page: Page) -> None:
    """No horizontal scrolling at this width."""
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than the viewport"


def _reachable(page: Page, selector: str) -> None:
    button = page.locator(selector)
    button.scroll_into_view_if_needed()
    expect(button).to_be_visible()
    expect(button).to_be_enabled()
    box = button.bounding_box()
    width = page.viewport_size["width"] if page.viewport_size else 0
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width


def _command(instance: Instance) -> ConsoleCommand:
    return ConsoleCommand.objects.get(instance=instance)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_restart_with_confirmation_a_repeated_submit_and_the_outcome(
    live_server, page: Page, django_user_model
) -> None:
    instance = _ready_order(django_user_model, "rita")
    _log_in(page, live_server, instance)
    _fits(page)
    expect(page.locator("#runtime-rabbitmq")).to_contain_text("4.0.9")
    expect(page.locator("#activity")).to_contain_text("Your server is ready.")
    _reachable(page, "#console-restart")

    page.click("#console-restart")
    expect(page.locator("h1")).to_have_text("Restart your server?")
    _fits(page)
    _reachable(page, "#confirm-button")
    form = {
        name: page.locator(f"#confirm input[name={name}]").input_value()
        for name in ("csrfmiddlewaretoken", "request_id")
    }
    action = page.url
    page.dblclick("#confirm-button")  # an impatient double click
    expect(page.locator("#console-pending")).to_contain_text("Restarting your server")
    _fits(page)
    _shot(page, f"console-restart-pending-{page.width_name}")  # type: ignore[attr-defined]

    # The same form sent once more (a resubmit from the browser's history): nothing twice.
    again = page.request.post(action, form=form, headers={"Referer": action})
    assert again.ok
    assert ConsoleCommand.objects.filter(instance=instance).count() == 1
    assert OutboxMessage.objects.filter(routing_key="host.host-a").count() == 1

    page.evaluate("window.__noReload = 1")
    outcome(instance, _command(instance).request_id, messages.RESTART_VM)
    expect(page.locator("#console-pending")).to_have_count(0)  # the page updates itself
    expect(page.locator("#activity li").first).to_contain_text("Your server was restarted.")
    assert page.evaluate("window.__noReload") == 1
    _fits(page)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_rotated_password_is_shown_once_then_hidden(
    live_server, page: Page, django_user_model
) -> None:
    instance = _ready_order(django_user_model, "paula")
    old_password = instance.admin_password
    _log_in(page, live_server, instance)

    page.click("#console-password")
    expect(page.locator("h1")).to_have_text("Change the admin password?")
    _fits(page)
    page.click("#confirm-button")
    expect(page.locator("#console-pending")).to_contain_text("Setting your new password")
    new_password = _command(instance).new_password

    outcome(instance, _command(instance).request_id, messages.SET_ADMIN_PASSWORD)
    expect(page.locator("#new-password")).to_be_visible()
    assert new_password not in page.content()  # not in the page until asked for
    _reachable(page, "#new-password button")
    page.click("#new-password button")
    expect(page.locator("#admin-password")).to_have_text(new_password)
    expect(page.locator("#activity li").first).to_contain_text("Admin password changed")
    _fits(page)
    _shot(page, f"console-password-shown-{page.width_name}")  # type: ignore[attr-defined]

    page.reload()
    expect(page.locator("#console")).to_be_visible()
    expect(page.locator("#new-password")).to_have_count(0)
    expect(page.locator("#admin-password")).to_be_hidden()
    assert new_password not in page.content() and old_password not in page.content()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_plan_change_refuses_a_smaller_disk_and_shows_the_new_plan(
    live_server, page: Page, django_user_model
) -> None:
    instance = _ready_order(django_user_model, "carl")
    _log_in(page, live_server, instance)

    page.click("#console-plan")
    expect(page.locator("h1")).to_have_text("Change plan")
    _fits(page)
    bunny = page.locator("label[data-plan=bunny]")
    expect(bunny).to_contain_text("a disk can only grow")
    expect(bunny.locator("input")).to_be_disabled()
    expect(page.locator("label[data-plan=hare]")).to_contain_text("(your plan)")
    _shot(page, f"console-plan-choice-{page.width_name}")  # type: ignore[attr-defined]
    page.check("label[data-plan=warren] input")
    _reachable(page, "#confirm-button")
    page.click("#confirm-button")
    expect(page.locator("#console-pending")).to_contain_text("Changing your plan")

    command = _command(instance)
    outcome(instance, command.request_id, messages.RESIZE_VM, memory_mb=2048, vcpus=2, disk_gb=16)
    expect(page.locator("#activity li").first).to_contain_text("Plan changed from Hare")
    expect(page.locator("#runtime-disk")).to_have_text("16 GB")
    page.reload()
    expect(page.locator("h1")).to_have_text("Warren")
    expect(page.locator(".order-head")).to_contain_text("$49.00/month")
    _fits(page)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_server_that_is_down_shows_why_the_restart_failed(
    live_server, page: Page, django_user_model
) -> None:
    instance = _ready_order(django_user_model, "dora")
    _log_in(page, live_server, instance)
    page.click("#console-restart")
    page.click("#confirm-button")
    expect(page.locator("#console-pending")).to_be_visible()

    outcome(
        instance, _command(instance).request_id, messages.RESTART_VM, failed="the VM is stopped"
    )

    expect(page.locator("#console-failure")).to_contain_text("Restart failed: the VM is stopped")
    expect(page.locator("#activity li").first).to_contain_text("Restart failed")
    _reachable(page, "#console-restart")  # the owner may try again
    _fits(page)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_without_javascript_the_confirmation_still_works(
    live_server, page_without_js: Page, django_user_model
) -> None:
    page = page_without_js
    instance = _ready_order(django_user_model, "nick")
    _log_in(page, live_server, instance)

    page.click("#console-restart")
    page.click("#confirm-button")
    expect(page.locator("#console-pending")).to_be_visible()
    outcome(instance, _command(instance).request_id, messages.RESTART_VM)
    # The <noscript> refresh brings the outcome while something is pending.
    expect(page.locator("#console-pending")).to_have_count(0)
    expect(page.locator("#activity li").first).to_contain_text("Your server was restarted.")
    _fits(page)
