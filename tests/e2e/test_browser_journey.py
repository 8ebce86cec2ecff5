"""The customer's journey in a real browser against the whole running system (tiny image)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from tests.browser import chromium
from tests.e2e.harness import System

pytestmark = [pytest.mark.browser, pytest.mark.vm, pytest.mark.django_db(databases=[])]
SCREENSHOTS = Path(os.environ.get("WARREN_SCREENSHOTS", "/tmp"))


def test_sign_up_choose_a_plan_pay_offline_and_see_the_management_url(tiny_system: System):
    system = tiny_system
    system.start_all()
    with chromium(system.workdir / "profile") as context:
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{system.base_url}/accounts/signup/")
        page.fill("#id_username", "dora")
        page.fill("#id_email", "dora@example.com")
        page.fill("#id_password1", "Dora-likes-rabbits-42")
        page.fill("#id_password2", "Dora-likes-rabbits-42")
        page.click("button[type=submit]")

        page.click("#plan-bunny button")
        page.click("text=Pay (offline test payment)")
        page.click("text=Go to your order")

        # No reload from here: the page follows the order by itself.
        page.evaluate("window.__noReload = 'still here'")
        link = page.locator("#management-url")
        expect(link).to_be_visible(timeout=180_000)
        assert page.evaluate("window.__noReload") == "still here"
        url = link.get_attribute("href")
        username = page.locator("#admin-username").inner_text()

        page.click("text=Show password")
        password_field = page.locator("#admin-password")
        expect(password_field).to_be_visible()
        password = password_field.inner_text()
        page.screenshot(path=str(SCREENSHOTS / "warren-e2e-ready.png"), full_page=True)

    resp = requests.get(f"{url}api/overview", auth=(username, password), timeout=10)
    assert resp.status_code == 200
