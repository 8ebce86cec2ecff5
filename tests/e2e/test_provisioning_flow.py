"""A customer's whole journey, over HTTP, through real processes: payment webhook → VM → URL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from tests.e2e.harness import System, wait_until
from tests.tls_clients import named_session

pytestmark = pytest.mark.django_db(transaction=False, databases=[])


def management_url(page: str) -> str | None:
    match = re.search(r'id="management-url" href="([^"]+)"', page)
    return match.group(1) if match else None


def journey(system: System, boot_timeout: float) -> None:
    """`make run`'s customer path. With TLS (WARREN_CA_CERT set), the URLs are https/amqps and
    verified against the root the order page offers for download."""
    ca = system.env.get("WARREN_CA_CERT") or None
    system.start_all()
    system.create_customer("alice", "a-long-passphrase-1")
    alice = system.login("alice", "a-long-passphrase-1")
    order_id = system.buy(alice, "bunny")
    assert system.order_status(alice, order_id)["status"] == "pending_payment"

    # Stripe tells the shop the customer paid: a correctly signed webhook.
    event = system.checkout_completed_event(order_id)
    assert system.post_webhook(event).status_code == 200
    assert system.post_webhook(event).status_code == 200  # Stripe retries; nothing doubles

    url = wait_until(
        lambda: management_url(system.order_page(alice, order_id)),
        boot_timeout,
        "the order page to show a management URL",
        interval=1,
        system=system,
    )
    assert system.order_status(alice, order_id)["status"] == "ready"
    assert url.startswith("https://" if ca else "http://127.0.0.1:")
    creds = system.reveal_credentials(alice, order_id)
    assert creds["username"] and creds["username"] != "guest"
    verify: str | bool = True
    client = requests.Session()
    if ca:
        page = system.order_page(alice, order_id)
        assert "amqps://" in page
        root = alice.get(system.base_url + "/orders/warren-ca.pem", timeout=10)
        assert root.status_code == 200 and root.content == Path(ca).read_bytes()
        verify = ca
        # The link names the server's own name (*.localhost: loopback in browsers and curl);
        # Python does not resolve it, so connect to loopback and verify that name.
        name_match = re.search(r'<code id="tls-name">([^<]+)</code>', page)
        assert name_match, "the page shows the server's TLS name"
        name = name_match.group(1)
        assert url.startswith(f"https://{name}:")
        url = url.replace(name, "127.0.0.1", 1)
        client = named_session(name)

    overview = client.get(
        url + "api/overview", auth=(creds["username"], creds["password"]), timeout=10, verify=verify
    )
    assert overview.status_code == 200, overview.text[:200]
    guest = client.get(url + "api/overview", auth=("guest", "guest"), timeout=10, verify=verify)
    assert guest.status_code == 401

    vm_pids = system.qemu_pids()
    assert len(vm_pids) == 1, "exactly one VM for one paid order (webhook delivered twice)"

    system.cancel(alice, order_id)
    wait_until(
        lambda: system.order_status(alice, order_id)["status"] == "deleted",
        120,
        "the order to show the VM deleted",
        system=system,
    )
    assert "has been deleted" in system.order_page(alice, order_id)
    assert system.qemu_pids() == []
    assert not any(system.workdir.joinpath("vmbackend").rglob("*.qcow2")), "the VM's disk is gone"


@pytest.mark.vm
def test_a_paid_order_gets_a_working_management_url_and_cancel_deletes_the_vm(tiny_system: System):
    journey(tiny_system, boot_timeout=180)


@pytest.mark.slow
def test_a_paid_order_gets_a_real_rabbitmq_server(rabbitmq_system: System):
    journey(rabbitmq_system, boot_timeout=600)
