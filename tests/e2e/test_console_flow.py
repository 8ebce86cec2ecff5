"""The console end to end: a customer rotates the admin password, restarts the server and changes
plan from the order page, over HTTP, through the real shop, relay, event worker, host daemon and
a tiny VM. The old password is refused by the VM's management API at once; the new one works."""

from __future__ import annotations

import re

import pytest
import requests

from tests.e2e.harness import System, csrf, wait_until

pytestmark = pytest.mark.django_db(transaction=False, databases=[])


def _management_url(page: str) -> str | None:
    match = re.search(r'id="management-url" href="([^"]+)"', page)
    return match.group(1) if match else None


def _console(system: System, session: requests.Session, order_id: str, action: str) -> str:
    """Open the action's confirmation page and confirm it, as the customer's browser does."""
    url = f"{system.base_url}/orders/{order_id}/console/{action}/"
    page = session.get(url, timeout=10)
    page.raise_for_status()
    request_id = re.search(r'name="request_id" value="([0-9a-f-]{36})"', page.text)
    assert request_id, page.text[:2000]
    response = session.post(
        url,
        data={"csrfmiddlewaretoken": csrf(page.text), "request_id": request_id.group(1)},
        headers={"Referer": url},
        timeout=10,
    )
    response.raise_for_status()
    return response.text


def _status(url: str, user: str, password: str) -> int:
    return requests.get(url + "api/overview", auth=(user, password), timeout=10).status_code


@pytest.mark.vm
@pytest.mark.timeout(600)
def test_a_customer_rotates_the_password_and_restarts_from_the_order_page(
    tiny_system: System,
) -> None:
    system = tiny_system
    system.start_all()
    system.create_customer("olga", "a-long-passphrase-1")
    olga = system.login("olga", "a-long-passphrase-1")
    order_id = system.buy(olga, "bunny")
    assert system.post_webhook(system.checkout_completed_event(order_id)).status_code == 200
    url = wait_until(
        lambda: _management_url(system.order_page(olga, order_id)),
        240,
        "the order page to show a management URL",
        interval=1,
        system=system,
    )
    old = system.reveal_credentials(olga, order_id)
    assert _status(url, old["username"], old["password"]) == 200
    page = system.order_page(olga, order_id)
    assert 'id="runtime-rabbitmq">' in page

    # Rotate: the page says it is being set, then offers the new password once.
    page = _console(system, olga, order_id, "password")
    assert "Setting your new password" in page
    wait_until(
        lambda: 'id="new-password"' in system.order_page(olga, order_id),
        120,
        "the new password to be confirmed by the host",
        interval=1,
        system=system,
    )
    new = system.reveal_credentials(olga, order_id)
    assert new["password"] != old["password"]
    assert _status(url, old["username"], new["password"]) == 200
    assert _status(url, old["username"], old["password"]) == 401  # refused at once
    page = system.order_page(olga, order_id)
    assert 'id="new-password"' not in page and new["password"] not in page
    assert "Admin password changed" in page

    # Restart: the same URL and the new password work afterwards.
    assert "Restarting your server" in _console(system, olga, order_id, "restart")
    wait_until(
        lambda: "Your server was restarted." in system.order_page(olga, order_id),
        240,
        "the restart to finish",
        interval=1,
        system=system,
    )
    url = _management_url(system.order_page(olga, order_id)) or url
    wait_until(
        lambda: _status(url, new["username"], new["password"]) == 200,
        120,
        "the management API to answer with the new password after the restart",
        system=system,
    )
    assert system.qemu_pids(), "the VM runs"

    # Change plan (bunny -> hare: more memory, a bigger disk): the VM restarts with its new size,
    # the order shows the new plan, and the same credentials still work.
    url_plan = f"{system.base_url}/orders/{order_id}/console/plan/"
    choice = olga.get(url_plan, timeout=10).text
    request_id = re.search(r'name="request_id" value="([0-9a-f-]{36})"', choice)
    assert request_id, choice[:2000]
    olga.post(
        url_plan,
        data={
            "csrfmiddlewaretoken": csrf(choice),
            "request_id": request_id.group(1),
            "plan": "hare",
        },
        headers={"Referer": url_plan},
        timeout=10,
    ).raise_for_status()
    wait_until(
        lambda: "Plan changed from Bunny" in system.order_page(olga, order_id),
        300,
        "the resize to finish",
        interval=1,
        system=system,
    )
    page = system.order_page(olga, order_id)
    assert "<h1>Hare</h1>" in page and 'id="runtime-disk">8 GB<' in page
    url = _management_url(page) or url
    wait_until(
        lambda: _status(url, new["username"], new["password"]) == 200,
        120,
        "the management API to answer after the resize",
        system=system,
    )
    logs = "".join(system.log(name) for name in system.commands)  # shop and host daemon
    assert new["password"] not in logs and old["password"] not in logs
