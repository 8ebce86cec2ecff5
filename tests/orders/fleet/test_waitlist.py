"""Selling only what can be delivered: a plan no live host can fit is sold out on the pricing
page and at checkout, with a waitlist whose addresses are emailed once when room appears."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.fleet.waitlist import join, notify_waitlist
from orders.messaging.consumer import EventConsumer
from orders.messaging.host_events import handle_message
from orders.models import Host, Order
from store.models import Plan, WaitlistEntry

pytestmark = pytest.mark.django_db


def heartbeat(host_id: str, memory: int, used: int = 0) -> None:
    body = {
        "version": 1,
        "type": "host.heartbeat",
        "host_id": host_id,
        "seq": 1,
        "capacity": 10,
        "running": 0,
        "free_slots": 10,
        "memory_total_mb": memory,
        "memory_used_mb": used,
        "memory_free_mb": memory - used,
        "vcpus_total": 8,
        "vcpus_used": 0,
        "vcpus_free": 8,
        "disk_total_gb": 100,
        "disk_used_gb": 0,
        "disk_free_gb": 100,
    }
    assert handle_message(json.dumps(body).encode()) == "applied"


@pytest.fixture
def plans() -> dict[str, Plan]:
    def plan(slug: str, memory: int, order: int) -> Plan:
        return Plan.objects.create(
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

    return {"bunny": plan("bunny", 512, 1), "warren": plan("warren", 2048, 2)}


@pytest.fixture
def full_for_warren(plans: dict[str, Plan]) -> str:
    """One live host with 1 GiB free: a Bunny fits, a Warren does not."""
    host_id = f"w-{uuid.uuid4().hex[:6]}"
    heartbeat(host_id, 4096, used=3072)
    return host_id


def test_the_pricing_page_sells_what_fits_and_offers_the_waitlist_for_the_rest(
    client: Client, plans, full_for_warren
) -> None:
    page = client.get(reverse("store:pricing")).content.decode()
    assert 'data-sold-out="warren"' in page and 'data-sold-out="bunny"' not in page
    assert "Buy Bunny" in page and "Buy Warren" not in page
    assert reverse("store:waitlist", args=["warren"]) in page


def test_with_no_host_that_reports_resources_every_plan_is_on_sale(client: Client, plans) -> None:
    page = client.get(reverse("store:pricing")).content.decode()
    assert "Sold out" not in page and "Buy Warren" in page


def test_a_plan_whose_only_host_went_silent_is_sold_out(client: Client, plans) -> None:
    heartbeat("w-gone", 65536)
    Host.objects.filter(host_id="w-gone").update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=600)
    )
    page = client.get(reverse("store:pricing")).content.decode()
    assert 'data-sold-out="bunny"' in page and 'data-sold-out="warren"' in page


def test_checkout_of_a_sold_out_plan_is_refused_and_no_order_is_made(
    client: Client, plans, full_for_warren
) -> None:
    user = get_user_model().objects.create_user("bob", "bob@example.com", "pw-bob-12345678")
    client.force_login(user)
    response = client.post(reverse("orders:checkout", args=["warren"]), follow=True)
    assert "Warren is sold out right now" in response.content.decode()
    assert not Order.objects.exists()


def test_joining_twice_is_one_entry_and_a_bad_address_none(client: Client, plans) -> None:
    url = reverse("store:waitlist", args=["warren"])
    for _ in range(2):
        response = client.post(url, {"email": "Carol@Example.com"}, follow=True)
        assert "You are on the waitlist for Warren" in response.content.decode()
    assert list(WaitlistEntry.objects.values_list("email", flat=True)) == ["carol@example.com"]
    response = client.post(url, {"email": "not an address"}, follow=True)
    assert "valid email address" in response.content.decode()
    assert client.get(url).status_code == 405
    assert (
        client.post(reverse("store:waitlist", args=["nope"]), {"email": "a@b.co"}).status_code
        == 404
    )
    assert WaitlistEntry.objects.count() == 1


def test_the_waitlist_is_emailed_once_when_room_appears(plans, full_for_warren) -> None:
    join(plan=plans["warren"], email="dave@example.com")
    join(plan=plans["bunny"], email="erin@example.com")  # on sale: told at the next check
    assert notify_waitlist() == 1
    assert [m.to for m in mail.outbox] == [["erin@example.com"]]
    heartbeat(full_for_warren, 4096, used=0)  # a VM was deleted: room for a Warren
    assert notify_waitlist() == 1
    assert mail.outbox[-1].to == ["dave@example.com"]
    assert mail.outbox[-1].subject == "Warren is available again"
    assert "/#plan-warren" in mail.outbox[-1].body
    assert notify_waitlist() == 0  # each entry once
    assert WaitlistEntry.objects.filter(notified_at__isnull=True).count() == 0
    join(plan=plans["warren"], email="dave@example.com")  # joining again after: a new entry
    assert WaitlistEntry.objects.filter(email="dave@example.com").count() == 2


def test_plans_nobody_waits_for_are_not_looked_at(plans, full_for_warren, caplog) -> None:
    join(plan=plans["warren"], email="gus@example.com")  # sold out: waits
    with caplog.at_level("INFO", logger="orders.fleet.waitlist"):
        assert notify_waitlist() == 0
    # Bunny is on sale but nobody waits for it; Warren has a waiter but no room: no line.
    assert "waitlist_notified" not in caplog.text
    join(plan=plans["bunny"], email="hal@example.com")
    with caplog.at_level("INFO", logger="orders.fleet.waitlist"):
        assert notify_waitlist() == 1
    assert "event=waitlist_notified plan=bunny entries=1" in caplog.text
    assert "waitlist_notified plan=warren" not in caplog.text


def test_the_event_worker_checks_the_waitlist_at_its_interval(plans, full_for_warren) -> None:
    join(plan=plans["bunny"], email="fay@example.com")
    consumer = EventConsumer(waitlist_interval=3600)
    assert consumer.check_waitlist(channel=None) == 1  # type: ignore[arg-type]
    assert consumer.check_waitlist(channel=None) is None  # type: ignore[arg-type]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(email=st.one_of(st.emails(), st.text(max_size=300)))
def test_any_waitlist_input_is_an_entry_or_a_message_never_an_error(plans, email) -> None:
    client = Client()
    response = client.post(reverse("store:waitlist", args=["warren"]), {"email": email})
    assert response.status_code == 302
    WaitlistEntry.objects.all().delete()
