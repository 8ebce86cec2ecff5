"""The shop in a real browser: sign up, buy, pay offline, watch the order page update itself.

Headless Debian chromium driven by Playwright against pytest-django's (threaded) live server. The
offline payment POSTs a signed event to the live server's own webhook URL: the production path.
The host daemon's part is simulated by writing the Instance the way the event consumer would;
the real VM is the end-to-end test's job. Screenshots go to $WARREN_SCREENSHOTS (default /tmp).
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone
from playwright.sync_api import Page, expect

from orders.lib import encryption
from orders.models import Instance, Order
from store.management.commands.seed_plans import seed_plans
from store.models import Plan
from tests.browser import chromium

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(os.environ.get("WARREN_SCREENSHOTS", "/tmp"))
WAIT_MS = 20_000  # the page polls every 2 s; generous for a loaded CI machine
PASSWORD = "Tr0ub4dor-and-3-more-words"
ADMIN_PASSWORD = "vm-admin-secret-3f9a"


def _chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, javascript: bool
) -> Iterator[Page]:
    # Playwright's sync API keeps an asyncio loop in this thread; the test's own ORM calls are
    # still plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with chromium(tmp_path / "chromium-profile", javascript=javascript) as context:
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)
            yield page
        finally:
            # Leave the shop first: no poll or refresh may still be running in the live server
            # when the test database is torn down.
            context.close()
            # Inside Playwright's sync API the test's ORM calls run in a context of their own
            # with their own database connection: close it here, or PostgreSQL refuses to drop
            # the test database at the end of the session ("being accessed by other users").
            connections.close_all()


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    yield from _chromium(tmp_path, monkeypatch, javascript=True)


@pytest.fixture
def page_without_js(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    yield from _chromium(tmp_path, monkeypatch, javascript=False)


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"warren-{name}.png"), full_page=True)


def _simulate(order: Order, order_status: str, **instance: object) -> None:
    """What the event consumer does when the host daemon reports progress."""
    Instance.objects.filter(order=order).update(updated_at=timezone.now(), **instance)
    Order.objects.filter(pk=order.pk).update(status=order_status, updated_at=timezone.now())


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_a_customer_buys_a_plan_and_watches_it_become_ready(
    live_server, page: Page, settings
) -> None:
    settings.STRIPE_SECRET_KEY = ""  # offline payments
    seed_plans()

    # Sign up; a new customer lands on the pricing page.
    page.goto(f"{live_server.url}/accounts/signup/")
    _shot(page, "01-signup")
    page.fill("#id_username", "carol")
    page.fill("#id_email", "carol@example.com")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Hosted RabbitMQ, your own server")
    expect(page.locator("#plan-hare")).to_contain_text("1 GiB")
    expect(page.locator(".nav")).to_contain_text("carol")
    _shot(page, "02-pricing")

    # Buy Hare: the offline stand-in for Stripe's checkout page.
    page.click("#plan-hare button")
    expect(page.locator("h1")).to_have_text("Payment")
    expect(page.locator(".card")).to_contain_text("Hare")
    _shot(page, "03-offline-checkout")
    order = Order.objects.get(user__username="carol")
    assert order.status == Order.Status.PENDING_PAYMENT
    assert str(order.public_id) in page.url

    # Pay: a signed checkout.session.completed goes to the live server's webhook.
    page.click("text=Pay (offline test payment)")
    expect(page.locator("h1")).to_have_text("Thank you!")
    expect(page.locator("main")).to_contain_text("confirming your payment")
    _shot(page, "04-success")
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert order.instance.status == Instance.Status.REQUESTED

    page.click("text=Go to your order")
    state = page.locator("#order-state")
    expect(state.locator(".badge")).to_have_text("Paid, VM requested")
    expect(state.locator("li.done[data-step=paid]")).to_be_visible()
    expect(state.locator("li.current[data-step=vm_starting]")).to_contain_text("waiting for a host")
    _shot(page, "05-order-paid")

    # From here on the page must update itself: mark the document and check the mark survives.
    page.evaluate("window.__noReload = 'still here'")

    _simulate(
        order,
        Order.Status.PROVISIONING,
        status=Instance.Status.BOOTING,
        stage=Instance.Stage.VM_STARTING,
        host_id="host-1",
    )
    expect(state.locator(".badge")).to_have_text("Provisioning")
    expect(state.locator("li.current[data-step=vm_starting]")).not_to_contain_text("waiting")

    _simulate(order, Order.Status.PROVISIONING, stage=Instance.Stage.RABBITMQ_STARTING)
    expect(state.locator("li.current[data-step=rabbitmq_starting]")).to_be_visible()
    expect(state.locator("li.done[data-step=vm_starting]")).to_be_visible()
    _shot(page, "06-order-rabbitmq-starting")

    _simulate(
        order,
        Order.Status.READY,
        status=Instance.Status.READY,
        management_url="http://127.0.0.1:15999/",
        amqp_url="amqp://" + order.instance.admin_username + "@127.0.0.1:5999/",
        admin_password_encrypted=encryption.encrypt(ADMIN_PASSWORD),  # stored encrypted
    )
    expect(state.locator(".badge")).to_have_text("Ready")
    expect(page.locator("#management-url")).to_have_attribute("href", "http://127.0.0.1:15999/")
    expect(page.locator("#admin-username")).to_have_text(order.instance.admin_username)
    assert page.evaluate("window.__noReload") == "still here"
    assert ADMIN_PASSWORD not in page.content()  # not in the page until asked for
    expect(page.locator("#admin-password")).to_be_hidden()

    page.click("text=Show password")
    expect(page.locator("#admin-password")).to_have_text(ADMIN_PASSWORD)
    expect(page.locator("#admin-password")).to_be_visible()
    assert ADMIN_PASSWORD not in page.url
    _shot(page, "07-order-ready")

    # Cancel (the confirm dialog is accepted): the VM is being deleted, then it is gone.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("text=Cancel order")
    expect(state).to_contain_text("is being deleted")
    order.refresh_from_db()
    assert order.status == Order.Status.DELETING
    page.evaluate("window.__noReload = 'after cancel'")
    _shot(page, "08-order-deleting")

    _simulate(order, Order.Status.DELETED, status=Instance.Status.DELETED)
    expect(state).to_contain_text("your server has been deleted")
    expect(state.locator(".badge")).to_have_text("Deleted")
    assert page.evaluate("window.__noReload") == "after cancel"
    _shot(page, "09-order-deleted")

    page.click("text=My orders")
    expect(page.locator("table.list")).to_contain_text("Hare")
    _shot(page, "10-orders")


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_an_anonymous_buyer_logs_in_and_comes_back_to_the_plan(
    live_server, page: Page, django_user_model
) -> None:
    seed_plans()
    django_user_model.objects.create_user("dave", "dave@example.com", PASSWORD)
    page.goto(live_server.url + "/")
    page.click("#plan-bunny a")
    expect(page.locator("h1")).to_have_text("Log in")
    _shot(page, "11-login")
    page.fill("#id_username", "dave")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#plan-bunny button")).to_have_text("Buy Bunny")
    assert page.url.endswith("/#plan-bunny")


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_a_failure_shows_up_with_its_reason_without_reload(
    live_server, page: Page, django_user_model
) -> None:
    seed_plans()
    plan = Plan.objects.get(slug="bunny")
    user = django_user_model.objects.create_user("erin", "erin@example.com", PASSWORD)
    order = Order.objects.create(
        user=user, plan=plan, status=Order.Status.PROVISIONING, paid_at=timezone.now()
    )
    Instance.objects.create(
        order=order,
        status=Instance.Status.BOOTING,
        stage=Instance.Stage.GUEST_UP,
        admin_username="warren-e1",
        admin_password=ADMIN_PASSWORD,
    )
    page.goto(f"{live_server.url}/accounts/login/?next=/orders/{order.public_id}/")
    page.fill("#id_username", "erin")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    state = page.locator("#order-state")
    expect(state.locator("li.current[data-step=rabbitmq_starting]")).to_be_visible()
    page.evaluate("window.__noReload = 1")

    _simulate(
        order,
        Order.Status.FAILED,
        status=Instance.Status.FAILED,
        failure_reason="RabbitMQ did not answer within 10 minutes",
    )
    expect(state).to_contain_text("We could not set up your server")
    expect(state).to_contain_text("RabbitMQ did not answer within 10 minutes")
    expect(state.locator(".badge")).to_have_text("Provisioning failed")
    assert page.evaluate("window.__noReload") == 1
    _shot(page, "12-order-failed")


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_without_javascript_the_page_refreshes_and_the_password_is_a_form_post(
    live_server, page_without_js: Page, django_user_model
) -> None:
    page = page_without_js
    seed_plans()
    user = django_user_model.objects.create_user("frank", "frank@example.com", PASSWORD)
    order = Order.objects.create(
        user=user,
        plan=Plan.objects.get(slug="warren"),
        status=Order.Status.PAID,
        paid_at=timezone.now(),
    )
    Instance.objects.create(order=order, admin_username="warren-f1", admin_password=ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/accounts/login/?next=/orders/{order.public_id}/")
    page.fill("#id_username", "frank")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#order-state .badge")).to_have_text("Paid, VM requested")

    _simulate(
        order,
        Order.Status.READY,
        status=Instance.Status.READY,
        management_url="http://127.0.0.1:15998/",
        amqp_url="amqp://warren-f1@127.0.0.1:5998/",
    )
    # The <noscript> meta refresh (5 s) reloads the page.
    expect(page.locator("#management-url")).to_have_attribute("href", "http://127.0.0.1:15998/")
    assert ADMIN_PASSWORD not in page.content()

    page.click("text=Show password")
    expect(page.locator("#admin-password")).to_have_text(ADMIN_PASSWORD)
    assert page.url.endswith(f"/orders/{order.public_id}/credentials/")
    _shot(page, "13-credentials-without-js")
