"""Metrics end to end (issue 12): a customer watches their server's graphs move in a real browser
while the test moves the numbers in the VM, and gets an alarm email and then a clear email.

The whole system as real processes (web, relay, event worker, host daemon) with a tiny VM: the
daemon samples the VM's management API every 2 s and publishes instance.metrics; the event
worker stores them and evaluates the alarms; the order page refetches its graphs. The tiny
stand-in's test hook (PUT /api/warren-test/messages_ready, with the customer's own credentials)
sets the queue depth the VM reports."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from tests.browser import chromium
from tests.e2e.harness import System, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.vm, pytest.mark.django_db(databases=[])]
SCREENSHOTS = Path(os.environ.get("WARREN_SCREENSHOTS", "/tmp"))
PASSWORD = "Nora-watches-her-queues-7"
ALARM = "Messages queued above 1000 for 1 min"


def _management_url(page: str) -> str | None:
    match = re.search(r'id="management-url" href="([^"]+)"', page)
    return match.group(1) if match else None


def _set(url: str, creds: dict[str, str], name: str, value: int | None) -> None:
    auth = (creds["username"], creds["password"])
    if value is None:
        answer = requests.delete(f"{url}api/warren-test/{name}", auth=auth, timeout=30)
    else:
        answer = requests.put(
            f"{url}api/warren-test/{name}", json={"value": value}, auth=auth, timeout=30
        )
    assert answer.status_code == 204, answer.status_code


@pytest.mark.timeout(900)
def test_graphs_move_and_a_queue_alarm_fires_and_clears_with_emails(tiny_system: System):
    system = tiny_system
    system.env.update(
        {
            "WARREN_METRICS_INTERVAL": "2",
            "WARREN_METRICS_REFRESH_SECONDS": "2",
            "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
        }
    )
    system.start_all()
    system.create_customer("nora", PASSWORD)
    nora = system.login("nora", PASSWORD)
    order_id = system.buy(nora, "bunny")
    assert system.post_webhook(system.checkout_completed_event(order_id)).status_code == 200
    url = wait_until(
        lambda: _management_url(system.order_page(nora, order_id)),
        300,
        "the order page to show a management URL",
        interval=1,
        system=system,
    )
    creds = system.reveal_credentials(nora, order_id)

    with chromium(system.workdir / "profile") as context:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{system.base_url}/accounts/login/?next=/orders/{order_id}/")
        page.fill("#id_username", "nora")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        queued = page.locator("#metric-messages-queued")
        expect(queued).to_have_text("0", timeout=120_000)  # the VM's first samples

        page.select_option("#alarm-kind", "queue_depth")
        page.fill("#alarm-threshold", "1000")
        page.fill("#alarm-minutes", "1")
        page.click("#alarm-form button[type=submit]")
        mine = page.locator("li[data-kind=queue_depth]")
        expect(mine).to_contain_text(ALARM)
        expect(mine).to_have_attribute("data-state", "ok")

        # From here the page follows the server by itself.
        page.evaluate("window.__noReload = 'still here'")
        _set(url, creds, "messages_ready", 5000)
        expect(queued).to_have_text("5,000", timeout=60_000)
        line = page.locator("#chart-queued polyline[data-series^=queued]").last
        assert len((line.get_attribute("points") or "").split()) >= 2
        page.screenshot(path=str(SCREENSHOTS / "warren-e2e-metrics-moving.png"), full_page=True)

        expect(mine).to_have_attribute("data-state", "firing", timeout=180_000)
        page.screenshot(path=str(SCREENSHOTS / "warren-e2e-alarm-firing.png"), full_page=True)

        _set(url, creds, "messages_ready", None)
        expect(queued).to_have_text("0", timeout=60_000)
        expect(mine).to_have_attribute("data-state", "ok", timeout=180_000)
        expect(mine).to_contain_text("cleared")
        assert page.evaluate("window.__noReload") == "still here"
        page.screenshot(path=str(SCREENSHOTS / "warren-e2e-alarm-cleared.png"), full_page=True)

    # The owner's two emails: queued by the event worker, printed by the mail worker's console
    # email backend.
    def worker_log() -> str | None:
        log = system.log("mail")
        return log if f"Subject: Cleared: {ALARM}" in log else None

    mail = wait_until(worker_log, 30, "the clear email", system=system)
    assert mail.count(f"Subject: Alarm: {ALARM}") == 1
    assert mail.count(f"Subject: Cleared: {ALARM}") == 1
    assert "To: nora@example.com" in mail
