"""Every page of the shop fits a phone (390 px) and a desktop (1280 px), fully populated.

One customer with a long user name owns orders in every state (a ready server with its
connection details, console, runtime, graphs, latest values and alarms, one restarting, one
paying, one failed, one deleted...); pricing shows a sold-out plan with its waitlist form. Each
page is loaded in headless Debian Chromium (Playwright) against the live server at both widths,
and fails when any element's edge is past the viewport or its content spills out of its box,
when the page scrolls sideways, when a number is broken in the middle ("27\n8.9 MiB"), or when
a value that must stay whole ("109.3 MiB / 278.9 MiB", a price, a badge) takes two lines.

The pages come from the URL conf: a URL name that is neither visited nor in SKIPPED (with the
reason) fails the test, so a new page cannot be left out silently. Screenshots of every page go
to $WARREN_SCREENSHOTS (default /tmp) when WARREN_WIDTH_SHOTS is set.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.tokens import default_token_generator
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from playwright.sync_api import Page, expect

from orders.api import tokens
from orders.console import commands as console
from orders.core.provisioning import request_provisioning
from orders.messaging.host_events import handle_message
from orders.models import ConsoleCommand, Instance, Order
from orders.monitoring import alarms
from orders.web import order_wait
from store.management.commands.seed_plans import seed_plans
from store.models import Plan
from tests.e2e.harness import wait_until
from tests.orders.console_support import RUNTIME, apply, outcome
from tests.orders.monitoring.test_metrics import sample
from tests.orders.web.test_pages_browser import _chromium
from vmbackend.protocol import messages

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "Tr0ub4dor-and-3-more-words"
# Longer than a phone is wide: the navigation must still keep "Log out" on screen.
USERNAME = "a.very.long.username.for.testing.the.navigation@example-customer.com"
WIDTHS = {"phone": (390, 844), "desktop": (1280, 800)}
SHOTS = Path(os.environ.get("WARREN_SCREENSHOTS", "/tmp"))

# URL names this test does not load as a page, and why. Names in POST_ONLY must answer a GET
# with 405 (checked), so the reason cannot go stale.
POST_ONLY = {
    "store:waitlist": "the pricing page's waitlist form; redirects back to pricing",
    "orders:stripe_webhook": "Stripe's webhook endpoint, not a page",
    "orders:cancel": "the order page's cancel form; redirects to the order page",
    "orders:alarm_add": "the order page's alarm form; redirects to the order page",
    "orders:alarm_remove": "the alarm list's remove button; redirects to the order page",
    "orders:billing_portal": "redirects to Stripe's customer portal",
    "logout": "the navigation's Log out button; redirects to pricing (LOGOUT_REDIRECT_URL)",
    "tokens:revoke": "the API tokens page's revoke button; redirects to that page",
}
SKIPPED = {
    **POST_ONLY,
    "orders:checkout": "GET redirects to pricing, POST to the payment page: both visited",
    "orders:status": "JSON for the order page's script; its HTML is checked inside the page",
    "orders:metrics": "JSON for the order page's script; its HTML is checked inside the page",
    "orders:ca_certificate": "a PEM file download, not a page",
}
# Django's admin (staff only, Django's own stylesheet) is left out as a whole.
SKIPPED_NAMESPACES = {
    "admin": "Django's admin: staff only, with Django's own responsive CSS",
    "api": "the JSON API (/api/v1/): no pages; tests/orders/api checks its answers",
}

# Every element's box against the viewport; elements inside a box that scrolls sideways on its
# own (overflow-x auto/scroll) may extend past it, the box itself may not.
OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const scrolls = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === "auto" || o === "scroll") return true;
    }
    return false;
  };
  const bad = [];
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    const right = r.right + window.scrollX, left = r.left + window.scrollX;
    // Content spilling out of its own box (a long word over the next column) counts too.
    const style = getComputedStyle(el);
    const spills = style.display !== "inline" && style.overflowX === "visible"
      && el.scrollWidth > el.clientWidth + 1 && !(el instanceof SVGElement);
    if ((right > width + 0.5 || left < -0.5 || spills) && !scrolls(el)) {
      bad.push({tag: el.tagName.toLowerCase(), id: el.id, cls: el.className.baseVal ?? el.className,
                text: (el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 60),
                left: Math.round(left), right: Math.round(right), spills});
    }
  }
  return {width, inner: window.innerWidth,
          scrollWidth: document.scrollingElement.scrollWidth, bad};
}"""

# Numbers the layout broke in the middle ("27\n8.9 MiB"): each one's text range must lie on one
# line. Digits inside URLs, ids and host names are not numbers here.
NUMBER = r"(?<![\w.,:/@#-])[$€£]?\d(?:[\d,.]*\d)?(?![\w:/@-])"
# Whole values that must stay on one line: the number with its unit ("278.9 MiB"), and for
# "used / limit" both.
ONE_LINE = (
    "#latest-values dd, .price, .badge, #runtime-memory, #runtime-disk, #runtime-vcpus, .nowrap"
)
WRAP_JS = """([pattern, oneLine]) => {
  const re = new RegExp(pattern, "gu");
  // Boxes on one line overlap vertically (a smaller font sits lower on the same line).
  const lines = (range) => {
    const seen = [];
    for (const r of range.getClientRects()) {
      if (r.width === 0) continue;
      if (!seen.some((l) => r.top < l.bottom - 1 && r.bottom > l.top + 1)) seen.push(r);
    }
    return seen.length;
  };
  const bad = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walk.nextNode(); node; node = walk.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest("script, style, noscript") || !parent.getClientRects().length) continue;
    for (const m of node.data.matchAll(re)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      if (lines(range) > 1) bad.push({value: m[0], in: parent.tagName.toLowerCase() + (parent.id ? "#" + parent.id : "")});
    }
  }
  for (const el of document.querySelectorAll(oneLine)) {
    if (!el.getClientRects().length) continue;
    const range = document.createRange();
    range.selectNodeContents(el);
    if (lines(range) > 1) bad.push({value: el.textContent.trim(), in: el.tagName.toLowerCase() + (el.id ? "#" + el.id : "." + el.className)});
  }
  return bad;
}"""


def _url_names() -> dict[str, str]:
    """Every named URL of the project, namespaced ("orders:detail", "login"), with its route."""
    names: dict[str, str] = {}

    def walk(patterns: list[Any], namespace: str, prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                if p.namespace in SKIPPED_NAMESPACES:
                    continue
                inner = f"{namespace}{p.namespace}:" if p.namespace else namespace
                walk(p.url_patterns, inner, route)
            elif isinstance(p, URLPattern) and p.name:
                names.setdefault(namespace + p.name, route)

    walk(get_resolver().url_patterns, "", "")
    return names


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:
    yield from _chromium(tmp_path, monkeypatch, javascript=True)


def _heartbeat() -> None:
    """A host with 1 GiB free: Bunny is on sale, Warren sold out (its waitlist form shows)."""
    body = {
        "version": 1,
        "type": "host.heartbeat",
        "host_id": "host-a",
        "seq": int(timezone.now().timestamp() * 1000),
        "capacity": 10,
        "memory_total_mb": 4096,
        "memory_used_mb": 3072,
        "vcpus_total": 8,
        "disk_total_gb": 100,
    }
    assert handle_message(json.dumps(body).encode()) == "applied"


def _order(user: Any, slug: str, status: str = Order.Status.PENDING_PAYMENT) -> Order:
    return Order.objects.create(
        user=user,
        plan=Plan.objects.get(slug=slug),
        status=status,
        paid_at=None if status == Order.Status.PENDING_PAYMENT else timezone.now(),
    )


def _provisioned(user: Any, slug: str) -> Instance:
    order = _order(user, slug)
    with transaction.atomic():
        instance = request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))
    assert instance is not None
    return instance


def _ready(user: Any, slug: str) -> Instance:
    """Accepted, then ready with amqps and a long host name (the longest connection details)."""
    instance = _provisioned(user, slug)
    assert apply(instance, messages.INSTANCE_ACCEPTED, image="tiny") == "applied"
    host = f"vm-{instance.public_id.hex[:12]}.eu-central-2.hosts.warren-example.com"
    ready = {
        "management_url": f"https://{host}:15671/",
        "amqp_url": f"amqps://{instance.admin_username}@{host}:5671/",
        "admin_username": instance.admin_username,
        "ip_addresses": ["10.0.2.15"],
        "boot": "restore",
        "seconds": 2.5,
        "runtime": RUNTIME,
    }
    assert apply(instance, messages.INSTANCE_READY, **ready) == "applied"
    return Instance.objects.select_related("order__plan").get(pk=instance.pk)


def _samples(instance: Instance) -> None:
    """An hour of samples (large values, so every number is long) with a queue-depth alarm
    that fired and cleared, and one that is firing now."""
    alarms.add_alarm(instance=instance, kind="queue_depth", threshold=100000, minutes=1)
    alarms.add_alarm(instance=instance, kind="connections", threshold=1000, minutes=1)
    now = timezone.now()
    for i in range(60):
        depth = 250_000 if 20 <= i < 30 else 12_345 + i
        values = sample(
            messages_ready=depth,
            messages_unacked=1_234,
            publish_rate=12_345.6,
            deliver_rate=9_876.5,
            ack_rate=9_870.1,
            connections=1_500 if i >= 50 else 900,
            channels=12_000,
            consumers=3_000,
            queues=2_500,
            mem_used=int(109.3 * 2**20),
            mem_limit=int(278.9 * 2**20),
            disk_free=int(7.8 * 2**30),
            disk_free_limit=50 * 2**20,
            uptime_s=12 * 86400 + 23 * 3600 + 59 * 60,
            cpu_percent=87.5,
        )
        body = messages.metrics_event(
            instance_id=str(instance.public_id), host_id=instance.host_id, metrics=values
        )
        body["occurred_at"] = (now - timedelta(minutes=59 - i)).isoformat()
        assert handle_message(json.dumps(body).encode()) == "recorded"


def _customer(django_user_model: Any, settings: Any) -> dict[str, Any]:
    """The customer and their orders; returns what the walk needs."""
    settings.STRIPE_SECRET_KEY = ""  # offline payments: the payment page is the shop's own
    settings.CA_CERT = "/nonexistent/warren-ca.pem"  # the order page offers the download
    seed_plans()
    _heartbeat()
    user = django_user_model.objects.create_user(USERNAME, "long@example.com", PASSWORD)

    main = _ready(user, "hare")  # ready: connection, runtime, console, graphs, alarms
    _samples(main)
    rid = uuid.uuid4()
    console.request_password_rotation(order=main.order, request_id=rid)
    outcome(main, rid, messages.SET_ADMIN_PASSWORD)  # "Your admin password was changed"

    restarting = _ready(user, "bunny")  # a console command waiting for its host
    console.request_restart(order=restarting.order, request_id=uuid.uuid4())
    failed_command = _ready(user, "bunny")
    rid = uuid.uuid4()
    console.request_restart(order=failed_command.order, request_id=rid)
    outcome(failed_command, rid, messages.RESTART_VM, failed="the VM is stopped")
    assert ConsoleCommand.objects.filter(instance=failed_command, status="failed").exists()

    booting = _provisioned(user, "warren")  # paid, VM requested, accepted by a host
    assert apply(booting, messages.INSTANCE_ACCEPTED, image="tiny") == "applied"
    failed = _provisioned(user, "bunny")
    Instance.objects.filter(pk=failed.pk).update(
        status=Instance.Status.FAILED,
        failure_reason="RabbitMQ did not answer within 10 minutes after 3 attempts on 2 hosts",
    )
    Order.objects.filter(pk=failed.order.pk).update(status=Order.Status.FAILED)
    pending = _order(user, "warren")
    past_due = _order(user, "hare", Order.Status.PAST_DUE)
    deleted = _order(user, "hare", Order.Status.DELETED)
    cancelled = _order(user, "bunny", Order.Status.CANCELLED)
    return {
        "user": user,
        "main": main.order,
        "orders": [
            main.order,
            restarting.order,
            failed_command.order,
            booting.order,
            failed.order,
            pending,
            past_due,
            deleted,
            cancelled,
        ],
        "pending": pending,
    }


def _check(page: Page, label: str, problems: list[str], visited: set[str]) -> None:
    """The page as loaded now: record its URL name, then its width and its numbers."""
    page.wait_for_load_state("load")
    match = resolve(urlsplit(page.url).path)
    visited.add(match.view_name)
    result = page.evaluate(OVERFLOW_JS)
    width = page.viewport_size["width"] if page.viewport_size else 0
    where = f"{label} ({match.view_name}) at {width} px"
    if result["scrollWidth"] > result["inner"] or result["bad"]:
        lines = [f"{where}: page {result['scrollWidth']} px wide"]
        lines += [
            f"    <{b['tag']} id={b['id']!r} class={b['cls']!r}> left {b['left']} right "
            f"{b['right']}{' (content spills out)' if b['spills'] else ''}: {b['text']!r}"
            for b in result["bad"]
        ]
        problems.append("\n".join(lines))
    broken = page.evaluate(WRAP_JS, [NUMBER, ONE_LINE])
    if broken:
        problems.append(
            f"{where}: values broken across lines: "
            + ", ".join(f"{b['value']!r} in {b['in']}" for b in broken)
        )
    if os.environ.get("WARREN_WIDTH_SHOTS"):
        name = label.replace(" ", "-").replace("/", "-")
        page.screenshot(path=str(SHOTS / f"widths-{width}-{name}.png"), full_page=True)
        # Phone pages in screen-sized parts too, readable at full size.
        height = page.evaluate("document.scrollingElement.scrollHeight")
        for n, top in enumerate(range(0, height if width < 600 else 0, 1000)):
            page.screenshot(
                path=str(SHOTS / f"widths-{width}-{name}-part{n}.png"),
                clip={"x": 0, "y": top, "width": width, "height": min(1000, height - top)},
                full_page=True,
            )


def _walk(page: Page, base: str, data: dict[str, Any], problems: list[str], seen: set[str]) -> None:
    user = data["user"]

    def visit(path: str, label: str) -> None:
        page.goto(base + path)
        _check(page, label, problems, seen)

    # Signed out.
    visit("/", "pricing")
    expect(page.locator("[data-sold-out=warren]")).to_be_visible()
    visit("/accounts/signup/", "signup")
    visit("/accounts/password_reset/", "password reset")
    visit("/accounts/password_reset/done/", "password reset sent")
    user.refresh_from_db()  # the token covers last_login, which the first walk's log-in set
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    visit(f"/accounts/reset/{uid}/{default_token_generator.make_token(user)}/", "set password")
    expect(page.locator("#id_new_password1")).to_be_visible()
    visit("/accounts/reset/done/", "password reset complete")
    visit("/accounts/login/", "login")

    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator(".nav")).to_contain_text("Log out")

    # Signed in.
    visit("/", "pricing signed in")
    expect(page.locator("[data-sold-out=warren]")).to_be_visible()
    visit("/orders/", "orders")
    expect(page.locator("main a[href^='/orders/']")).to_have_count(len(data["orders"]))
    for n, order in enumerate(data["orders"]):
        visit(f"/orders/{order.public_id}/", f"order {n} {order.status}")
    main = data["main"]
    page.goto(f"{base}/orders/{main.public_id}/")
    expect(page.locator("#metric-memory")).to_contain_text("MiB")
    expect(page.locator("#alarms li[data-state=firing]")).not_to_have_count(0)
    for range_key in ("24h", "7d"):
        visit(f"/orders/{main.public_id}/?range={range_key}", f"order metrics {range_key}")
    for action in ("restart", "password", "plan"):
        visit(f"/orders/{main.public_id}/console/{action}/", f"console {action}")
    # The password without JavaScript: the reveal form POSTs to a page of its own.
    page.goto(f"{base}/orders/{main.public_id}/")
    with page.expect_navigation():
        page.evaluate("document.querySelector('#connection form[data-reveal]').submit()")
    _check(page, "credentials", problems, seen)
    pending = data["pending"]
    visit(f"/orders/{pending.public_id}/pay/", "payment")
    visit(f"/orders/{pending.public_id}/success/", "payment success")
    visit(f"/orders/{pending.public_id}/checkout-cancelled/", "payment cancelled")
    visit("/account/api-tokens/", "API tokens")
    page.fill("#token-name", "a token with a long name for a phone-width check")
    with page.expect_navigation():
        page.click("#token-form button[type=submit]")
    expect(page.locator("#new-token-value")).to_contain_text("wrn_")
    _check(page, "API token shown once", problems, seen)
    visit("/accounts/password_change/", "password change")
    visit("/accounts/password_change/done/", "password changed")
    with page.expect_navigation():
        page.click("text=Log out")
    expect(page.locator(".nav")).to_contain_text("Log in")
    page.goto("about:blank")  # no long poll of the order page outlives the test


@pytest.mark.timeout(600)
def test_every_page_fits_a_phone_and_a_desktop(
    live_server: Any, page: Page, django_user_model: Any, settings: Any
) -> None:
    # Each order page long-polls its status; a poll still held by the live server after the test
    # would read a database that is gone (and disturb the next test): keep them short, and wait
    # for the last one to end before the test does.
    settings.ORDER_LONG_POLL_SECONDS = 0.5
    try:
        _check_every_page(live_server, page, django_user_model, settings)
    finally:
        page.goto("about:blank")
        wait_until(lambda: order_wait.waiting() == 0, 30, "no long poll left in this process")


def _check_every_page(live_server: Any, page: Page, django_user_model: Any, settings: Any) -> None:
    data = _customer(django_user_model, settings)
    names = _url_names()
    assert set(SKIPPED) <= set(names), f"SKIPPED names no URL: {set(SKIPPED) - set(names)}"
    client = Client()
    client.force_login(data["user"])
    main = data["main"]
    kwargs = {
        "plan_slug": "bunny",
        "public_id": main.public_id,
        "alarm_id": main.instance.alarms.first().pk,
        "token_id": tokens.create_token(user=data["user"], name="ci", scope="read")[0].pk,
    }
    for name in POST_ONLY:
        args = {k: v for k, v in kwargs.items() if f":{k}>" in names[name]}
        assert client.get(reverse(name, kwargs=args)).status_code == 405, name

    problems: list[str] = []
    visited: set[str] = set()
    for width, height in WIDTHS.values():
        _heartbeat()  # still live: pricing keeps its sold-out plan
        page.set_viewport_size({"width": width, "height": height})
        _walk(page, live_server.url, data, problems, visited)

    missing = set(names) - visited - set(SKIPPED)
    if missing:
        problems.append(f"pages neither visited nor skipped (with a reason): {sorted(missing)}")
    if visited & set(SKIPPED):
        problems.append(f"skipped but visited (drop from SKIPPED): {visited & set(SKIPPED)}")
    assert not problems, "\n" + "\n".join(problems)
