"""Selling only what can be delivered: a plan no live host can fit is sold out on the pricing
page and at checkout, with a waitlist whose addresses are emailed once when room appears."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.db import IntegrityError, transaction
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.fleet.waitlist import WaitlistError, join, notify_waitlist
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
    # Anonymous: no address to type in, a way to sign in; signed in: the account's address.
    assert "Sign in to join the waitlist" in page and 'name="email"' not in page
    client.force_login(_user("ursula"))
    page = client.get(reverse("store:pricing")).content.decode()
    assert reverse("store:waitlist", args=["warren"]) in page
    assert "We will write to ursula@example.com." in page


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
    user = User.objects.create_user("bob", "bob@example.com", "pw-bob-12345678")
    client.force_login(user)
    response = client.post(reverse("orders:checkout", args=["warren"]), follow=True)
    assert "Warren is sold out right now" in response.content.decode()
    assert not Order.objects.exists()


def _user(name: str, email: str | None = None) -> User:
    return User.objects.create_user(name, f"{name}@example.com" if email is None else email, "pw")


def test_joining_needs_sign_in_and_takes_no_typed_address(
    client: Client, plans, full_for_warren
) -> None:
    url = reverse("store:waitlist", args=["warren"])

    response = client.post(url, {"email": "victim@example.com"})

    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not WaitlistEntry.objects.exists()
    client.force_login(_user("carol"))
    client.post(url, {"email": "victim@example.com"})
    assert list(WaitlistEntry.objects.values_list("email", flat=True)) == ["carol@example.com"]


def test_joining_twice_is_one_entry_and_one_email(client: Client, plans, full_for_warren) -> None:
    client.force_login(_user("carol", "Carol@Example.com"))
    url = reverse("store:waitlist", args=["warren"])
    for _ in range(2):
        response = client.post(url, follow=True)
        assert "You are on the waitlist for Warren" in response.content.decode()
    assert list(WaitlistEntry.objects.values_list("email", flat=True)) == ["carol@example.com"]
    assert client.get(url).status_code == 405
    assert client.post(reverse("store:waitlist", args=["nope"])).status_code == 404

    heartbeat(full_for_warren, 4096, used=0)
    assert notify_waitlist() == 1
    assert notify_waitlist() == 0
    assert [m.to for m in mail.outbox] == [["carol@example.com"]]


def test_one_entry_per_address_and_plan_is_the_databases_rule(plans) -> None:
    WaitlistEntry.objects.create(plan=plans["warren"], email="a@example.com", notified_at=None)
    with pytest.raises(IntegrityError), transaction.atomic():
        WaitlistEntry.objects.create(
            plan=plans["warren"], email="a@example.com", notified_at=timezone.now()
        )


def test_a_plan_on_sale_is_refused(client: Client, plans, full_for_warren) -> None:
    client.force_login(_user("olga"))

    response = client.post(reverse("store:waitlist", args=["bunny"]), follow=True)

    assert "Bunny is on sale right now" in response.content.decode()
    assert not WaitlistEntry.objects.exists()


def test_an_account_without_an_address_cannot_join(plans, full_for_warren) -> None:
    with pytest.raises(WaitlistError, match="no email address"):
        join(plan=plans["warren"], user=_user("noaddr", ""))


@override_settings(WAITLIST_JOINS_PER_HOUR=2)
def test_joins_are_limited_per_customer_per_hour(plans, full_for_warren) -> None:
    user = _user("rita")
    sold_out = [_big_plan(f"big-{n}") for n in range(3)]
    join(plan=sold_out[0], user=user)
    join(plan=sold_out[1], user=user)
    join(plan=sold_out[1], user=user)  # a repeat: neither counted nor refused

    with pytest.raises(WaitlistError, match="too often"):
        join(plan=sold_out[2], user=user)

    assert WaitlistEntry.objects.count() == 2
    later = timezone.now() + timedelta(hours=1, seconds=1)
    join(plan=sold_out[2], user=user, now=later)  # the hour is over
    assert WaitlistEntry.objects.count() == 3


def _big_plan(slug: str) -> Plan:
    return Plan.objects.create(
        slug=slug,
        name=slug.title(),
        memory_mb=2048,
        vcpus=1,
        disk_gb=4,
        max_connections=100,
        max_queues=100,
        monthly_price_cents=9000,
    )


def test_the_waitlist_is_emailed_once_when_room_appears(plans, full_for_warren) -> None:
    dave = _user("dave")
    join(plan=plans["warren"], user=dave)
    # An entry from before the plan went on sale: told at the next check.
    WaitlistEntry.objects.create(plan=plans["bunny"], email="erin@example.com")
    assert notify_waitlist() == 1
    assert [m.to for m in mail.outbox] == [["erin@example.com"]]
    heartbeat(full_for_warren, 4096, used=0)  # a VM was deleted: room for a Warren
    assert notify_waitlist() == 1
    assert mail.outbox[-1].to == ["dave@example.com"]
    assert mail.outbox[-1].subject == "Warren is available again"
    assert "/#plan-warren" in mail.outbox[-1].body
    assert notify_waitlist() == 0  # each entry once
    assert WaitlistEntry.objects.filter(notified_at__isnull=True).count() == 0
    with pytest.raises(WaitlistError, match="on sale"):
        join(plan=plans["warren"], user=dave)
    heartbeat(full_for_warren, 4096, used=3072)  # sold out again: the same entry waits again
    join(plan=plans["warren"], user=dave)
    [entry] = WaitlistEntry.objects.filter(email="dave@example.com")
    assert entry.notified_at is None


def test_plans_nobody_waits_for_are_not_looked_at(plans, full_for_warren, caplog) -> None:
    join(plan=plans["warren"], user=_user("gus"))  # sold out: waits
    with caplog.at_level("INFO", logger="orders.fleet.waitlist"):
        assert notify_waitlist() == 0
    # Bunny is on sale but nobody waits for it; Warren has a waiter but no room: no line.
    assert "waitlist_notified" not in caplog.text
    WaitlistEntry.objects.create(plan=plans["bunny"], email="hal@example.com")  # from before
    with caplog.at_level("INFO", logger="orders.fleet.waitlist"):
        assert notify_waitlist() == 1
    assert "event=waitlist_notified plan=bunny entries=1" in caplog.text
    assert "waitlist_notified plan=warren" not in caplog.text


def test_the_event_worker_checks_the_waitlist_at_its_interval(plans, full_for_warren) -> None:
    WaitlistEntry.objects.create(plan=plans["bunny"], email="fay@example.com")
    consumer = EventConsumer(waitlist_interval=3600)
    assert consumer.check_waitlist(channel=None) == 1  # type: ignore[arg-type]
    assert consumer.check_waitlist(channel=None) is None  # type: ignore[arg-type]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(slug=st.text(max_size=60), email=st.text(max_size=300))
def test_any_waitlist_post_is_an_entry_or_a_message_never_an_error(
    plans, full_for_warren, slug, email
) -> None:
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.get_or_create(username="hy", email="hy@example.com")[0])
    response = client.post(f"/waitlist/{quote(slug, safe='')}/", {"email": email})
    assert response.status_code in (302, 404)
    assert set(WaitlistEntry.objects.values_list("email", flat=True)) <= {"hy@example.com"}
    WaitlistEntry.objects.all().delete()
