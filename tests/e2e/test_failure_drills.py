"""Failure drills on the whole system: each ends with the customer's order right and nothing lost."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.e2e.harness import System, admin_action, admin_session, wait_until
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.vm, pytest.mark.django_db(databases=[])]

PASSWORD = "a-long-passphrase-1"


def paid_order(system: System) -> tuple[object, str]:
    system.create_customer("bob", PASSWORD)
    bob = system.login("bob", PASSWORD)
    order_id = system.buy(bob, "bunny")
    assert system.post_webhook(system.checkout_completed_event(order_id)).status_code == 200
    return bob, order_id


def status(system: System, session, order_id: str) -> str:
    return system.order_status(session, order_id)["status"]


def test_a_payment_during_a_broker_outage_still_gets_its_vm(workdir, amqp_url: str, images_root):
    proxy = TcpProxy("127.0.0.1", 5672).up()
    parts = urlsplit(amqp_url)
    via_proxy = urlunsplit(parts._replace(netloc=f"guest:guest@{proxy.url_host}"))
    system = System(workdir, via_proxy, images_root, image="tiny")
    system.prepare()
    try:
        system.start_all()
        # Every component connected once: the outage below cuts live connections.
        wait_until(
            lambda: (
                "event=relay_connected" in system.log("relay")
                and "event=consumer_connected" in system.log("events")
                and "connected host_id=" in system.log("vmbackend")
            ),
            60,
            "every component to connect to the broker",
            interval=0.2,
            system=system,
        )
        proxy.down()
        bob, order_id = paid_order(system)  # the webhook answers 200 with the broker gone
        assert status(system, bob, order_id) == "paid"
        failures = system.log("relay").count("event=relay_unavailable")
        # The relay tries again with the order's create-vm pending and fails: the order must
        # wait, not fail.
        wait_until(
            lambda: system.log("relay").count("event=relay_unavailable") > failures,
            60,
            "the relay to fail again with the order pending",
            interval=0.2,
            system=system,
        )
        assert status(system, bob, order_id) == "paid"

        proxy.up()  # the broker is back on the same address
        wait_until(
            lambda: status(system, bob, order_id) == "ready",
            240,
            "the order to become ready after the outage",
            system=system,
        )
        assert len(system.qemu_pids()) == 1
    finally:
        system.stop_all()
        system.drop_broker_users()
        proxy.down()
        for pid in system.qemu_pids():
            system.kill_pid(pid)


def test_a_daemon_killed_during_the_boot_still_delivers_exactly_one_vm(tiny_system: System):
    system = tiny_system
    system.start_all()
    bob, order_id = paid_order(system)
    pids = wait_until(system.qemu_pids, 120, "QEMU to start", interval=0.1, system=system)
    assert status(system, bob, order_id) != "ready"  # killed mid-boot, not after
    system.kill("vmbackend")  # SIGKILL: no chance to clean up

    system.start("vmbackend")
    wait_until(
        lambda: status(system, bob, order_id) == "ready",
        240,
        "the order to become ready after the daemon restart",
        system=system,
    )
    assert system.qemu_pids() == pids, (
        "the restarted daemon adopted the VM instead of making another"
    )


def test_a_vm_that_never_becomes_ready_fails_with_a_reason_and_staff_can_retry(tiny_system: System):
    system = tiny_system
    for name in ("web", "relay", "events"):
        system.start(name)
    # A deadline no boot can meet plays a VM that never comes up.
    system.start("vmbackend", env={"WARREN_BOOT_DEADLINE": "1"})
    bob, order_id = paid_order(system)
    wait_until(
        lambda: status(system, bob, order_id) == "failed", 120, "the order to fail", system=system
    )
    page = system.order_page(bob, order_id)
    assert "could not set up your server" in page
    reason = page.split("could not set up your server", 1)[1].split("</p>", 1)[0]
    assert "deadline" in reason or "within" in reason, f"the daemon's reason is shown: {reason!r}"
    assert system.qemu_pids() == [], "a failed boot leaves no VM behind"

    system.kill("vmbackend")
    system.start("vmbackend")  # the host is healthy again
    staff = admin_session(system)
    admin_action(staff, system, "instance", order_id, "retry")
    wait_until(
        lambda: status(system, bob, order_id) == "ready",
        240,
        "the retried order to become ready",
        system=system,
    )
    assert len(system.qemu_pids()) == 1
