"""The console's pages (orders/web/console.py console_action, orders/web/billing.py
billing_portal, and the order page's console, runtime and activity parts). Personas: owner, another
customer, anonymous, staff."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orders.models import Activity, ConsoleCommand, Instance, Order, OutboxMessage
from store.models import Plan
from tests.orders.console_support import FakeStripe, install_fake_stripe, make_ready, outcome
from vmbackend.protocol import messages

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready(instance: Instance) -> Instance:
    return make_ready(instance)


@pytest.fixture
def owner_client(client: Client, ready: Instance) -> Client:
    client.force_login(ready.order.user)
    return client


@pytest.fixture
def bigger(db: None) -> Plan:
    return Plan.objects.create(
        slug="bigger",
        name="Bigger",
        memory_mb=1024,
        vcpus=2,
        disk_gb=8,
        max_connections=100,
        max_queues=200,
        monthly_price_cents=1900,
    )


def _console_url(order: Order, action: str) -> str:
    return reverse("orders:console", args=[order.public_id, action])


def _detail(client: Client, order: Order) -> str:
    return client.get(reverse("orders:detail", args=[order.public_id])).content.decode()


def _request_id(html: str) -> str:
    match = re.search(r'name="request_id" value="([0-9a-f-]{36})"', html)
    assert match, "the confirmation form carries a request id"
    return match.group(1)


def _confirm_and_post(client: Client, order: Order, action: str, **fields: str) -> Any:
    page = client.get(_console_url(order, action))
    assert page.status_code == 200
    data = {"request_id": _request_id(page.content.decode()), **fields}
    return client.post(_console_url(order, action), data)


# -- who may -------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["restart", "password", "plan"])
def test_the_owner_gets_a_confirmation_page(owner_client: Client, ready: Instance, action) -> None:
    page = owner_client.get(_console_url(ready.order, action))

    assert page.status_code == 200
    assert page["Cache-Control"].startswith("max-age=0") or "no-cache" in page["Cache-Control"]
    html = page.content.decode()
    assert 'id="confirm-button"' in html and "csrfmiddlewaretoken" in html
    assert not ConsoleCommand.objects.exists()  # looking is not doing


@pytest.mark.parametrize("method", ["get", "post"])
def test_another_customer_gets_404(client: Client, ready: Instance, method: str) -> None:
    client.force_login(get_user_model().objects.create_user("mallory", "m@example.com", "pw-x"))
    response = getattr(client, method)(
        _console_url(ready.order, "restart"), {"request_id": str(uuid.uuid4())}
    )
    assert response.status_code == 404
    assert not ConsoleCommand.objects.exists()


def test_staff_get_404_too(client: Client, ready: Instance) -> None:
    staff = get_user_model().objects.create_user("staff", "s@example.com", "pw-x", is_staff=True)
    client.force_login(staff)
    assert client.get(_console_url(ready.order, "restart")).status_code == 404


def test_an_anonymous_visitor_is_sent_to_log_in(client: Client, ready: Instance) -> None:
    response = client.post(_console_url(ready.order, "restart"), {"request_id": str(uuid.uuid4())})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert not ConsoleCommand.objects.exists()


def test_a_post_without_the_csrf_token_is_refused(ready: Instance) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(ready.order.user)
    response = client.post(_console_url(ready.order, "restart"), {"request_id": str(uuid.uuid4())})
    assert response.status_code == 403
    assert not ConsoleCommand.objects.exists()


def test_an_unknown_action_is_404(owner_client: Client, ready: Instance) -> None:
    assert owner_client.get(_console_url(ready.order, "reboot-host")).status_code == 404


# -- doing it ------------------------------------------------------------------------------------


def test_a_confirmed_restart_is_sent_once_however_often_it_is_posted(
    owner_client: Client, ready: Instance
) -> None:
    page = owner_client.get(_console_url(ready.order, "restart"))
    data = {"request_id": _request_id(page.content.decode())}

    first = owner_client.post(_console_url(ready.order, "restart"), data, follow=True)
    second = owner_client.post(_console_url(ready.order, "restart"), data, follow=True)

    assert first.redirect_chain[-1][0] == reverse("orders:detail", args=[ready.order.public_id])
    assert "Restart requested" in first.content.decode()
    assert second.status_code == 200 and "in progress" not in second.content.decode()
    assert ConsoleCommand.objects.count() == 1
    assert OutboxMessage.objects.filter(routing_key="host.host-a").count() == 1
    html = _detail(owner_client, ready.order)
    assert 'id="console-pending"' in html and "Restarting your server" in html
    assert 'id="console-restart"' not in html  # no second action while one is pending


def test_a_second_form_while_one_is_pending_says_why(owner_client: Client, ready: Instance) -> None:
    _confirm_and_post(owner_client, ready.order, "restart")
    # The confirmation page says it before the owner can submit ...
    page = owner_client.get(_console_url(ready.order, "password")).content.decode()
    assert 'id="blocked"' in page and "Restart in progress" in page
    assert 'id="confirm-button"' not in page
    # ... and a form opened before the restart was asked for is refused with the reason.
    response = owner_client.post(
        _console_url(ready.order, "password"), {"request_id": str(uuid.uuid4())}, follow=True
    )
    assert "Restart in progress" in response.content.decode()
    assert ConsoleCommand.objects.count() == 1


def test_a_forged_request_id_changes_nothing(owner_client: Client, ready: Instance) -> None:
    response = owner_client.post(
        _console_url(ready.order, "restart"), {"request_id": "not-a-uuid"}, follow=True
    )
    assert "That form had expired" in response.content.decode()
    assert not ConsoleCommand.objects.exists()


def test_a_failed_restart_shows_the_reason(owner_client: Client, ready: Instance) -> None:
    _confirm_and_post(owner_client, ready.order, "restart")
    command = ConsoleCommand.objects.get()

    outcome(ready, command.request_id, messages.RESTART_VM, failed="the VM is not running")

    html = _detail(owner_client, ready.order)
    assert 'id="console-failure"' in html and "the VM is not running" in html
    assert 'id="console-restart"' in html  # may try again


def test_a_refused_downgrade_says_why_and_sends_nothing(
    owner_client: Client, ready: Instance
) -> None:
    Plan.objects.create(
        slug="small-disk",
        name="Small disk",
        memory_mb=256,
        vcpus=1,
        disk_gb=2,
        max_connections=10,
        max_queues=10,
        monthly_price_cents=400,
    )
    page = owner_client.get(_console_url(ready.order, "plan")).content.decode()
    assert re.search(r'value="small-disk" disabled', page)
    assert "a disk can only grow" in page

    response = _confirm_and_post(owner_client, ready.order, "plan", plan="small-disk")
    followed = owner_client.get(response["Location"]).content.decode()

    assert "a disk can only grow" in followed
    assert not ConsoleCommand.objects.exists()
    assert not OutboxMessage.objects.filter(routing_key="host.host-a").exists()


def test_a_plan_change_shows_the_new_plan_and_price_when_done(
    owner_client: Client, ready: Instance, bigger: Plan
) -> None:
    _confirm_and_post(owner_client, ready.order, "plan", plan="bigger")
    command = ConsoleCommand.objects.get()
    assert "Changing your plan" in _detail(owner_client, ready.order)

    outcome(ready, command.request_id, messages.RESIZE_VM, memory_mb=1024, vcpus=2, disk_gb=8)

    html = _detail(owner_client, ready.order)
    assert "<h1>Bigger</h1>" in html and "$19.00/month" in html
    assert 'id="runtime-memory">1 GiB<' in html and 'id="runtime-disk">8 GB<' in html
    assert "Plan changed from Test small ($9.00/month) to Bigger ($19.00/month)." in html


def test_a_rotated_password_is_offered_once_then_hidden(
    owner_client: Client, ready: Instance
) -> None:
    old = ready.admin_password
    _confirm_and_post(owner_client, ready.order, "password")
    command = ConsoleCommand.objects.get()
    new = command.new_password
    assert new not in _detail(owner_client, ready.order)

    outcome(ready, command.request_id, messages.SET_ADMIN_PASSWORD)

    html = _detail(owner_client, ready.order)
    assert 'id="new-password"' in html and new not in html and old not in html
    shown = owner_client.post(
        reverse("orders:credentials", args=[ready.order.public_id]),
        HTTP_ACCEPT="application/json",
    ).json()
    assert shown["password"] == new
    assert 'id="new-password"' not in _detail(owner_client, ready.order)


def test_the_page_shows_what_runs(owner_client: Client, ready: Instance) -> None:
    html = _detail(owner_client, ready.order)
    assert 'id="runtime-rabbitmq">4.0.9' in html
    assert 'id="runtime-erlang">27.3.4<' in html
    assert "rabbit@warren-vm" in html
    assert 'id="runtime-memory">512 MiB<' in html


def test_the_timeline_is_newest_first_and_bounded(owner_client: Client, ready: Instance) -> None:
    for n in range(30):
        Activity.objects.create(order=ready.order, kind=Activity.Kind.RESTARTED, message=f"n{n}")

    html = _detail(owner_client, ready.order)
    lines = re.findall(r'<li data-activity="[a-z_]+">.*?<span>(.*?)</span>', html)
    assert lines[:2] == ["n29", "n28"] and len(lines) == 20


# -- billing portal --------------------------------------------------------------------------------


def test_offline_there_is_no_billing_link(owner_client: Client, ready: Instance) -> None:
    assert 'id="billing"' not in _detail(owner_client, ready.order)
    url = reverse("orders:billing_portal", args=[ready.order.public_id])
    assert owner_client.post(url).status_code == 404


def test_with_stripe_the_billing_link_opens_the_customer_portal(
    owner_client: Client, ready: Instance, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    fake: FakeStripe = install_fake_stripe(monkeypatch, settings)
    Order.objects.filter(pk=ready.order.pk).update(stripe_customer_id="cus_123")
    fake.answer(
        "POST",
        "/v1/billing_portal/sessions",
        {
            "id": "bps_1",
            "object": "billing_portal.session",
            "url": "https://billing.stripe.com/p/s",
        },
    )
    assert 'id="billing"' in _detail(owner_client, ready.order)

    response = owner_client.post(reverse("orders:billing_portal", args=[ready.order.public_id]))

    assert (response.status_code, response["Location"]) == (302, "https://billing.stripe.com/p/s")
    [call] = fake.calls
    assert call["form"]["customer"] == "cus_123"
    assert call["form"]["return_url"].endswith(f"/orders/{ready.order.public_id}/")


def test_a_stranger_cannot_open_someone_elses_portal(
    client: Client, ready: Instance, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    fake = install_fake_stripe(monkeypatch, settings)
    Order.objects.filter(pk=ready.order.pk).update(stripe_customer_id="cus_123")
    client.force_login(get_user_model().objects.create_user("eve", "e@example.com", "pw-x"))
    response = client.post(reverse("orders:billing_portal", args=[ready.order.public_id]))
    assert response.status_code == 404 and fake.calls == []


# -- hostile form input (Hypothesis) ---------------------------------------------------------------

_TEXT = st.one_of(
    st.text(max_size=60), st.uuids().map(str), st.sampled_from(["bigger", "bunny", "", "\x00"])
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    action=st.sampled_from(["restart", "password", "plan", "x" * 40, "plan%00"]),
    request_id=_TEXT,
    plan=_TEXT,
)
@example(action="plan", request_id=str(uuid.uuid4()), plan="\x00")  # PostgreSQL refuses NUL
@example(action="plan", request_id=str(uuid.uuid4()), plan="b" * 60)
def test_any_form_input_is_answered_without_an_error(
    owner_client: Client, ready: Instance, bigger: Plan, action: str, request_id: str, plan: str
) -> None:
    try:
        url = _console_url(ready.order, action)
    except Exception:  # noqa: BLE001 - not a URL this site has (the resolver refuses it)
        return
    response = owner_client.post(url, {"request_id": request_id, "plan": plan})

    assert response.status_code in (302, 404)
    assert ConsoleCommand.objects.filter(status=ConsoleCommand.Status.SENT).count() <= 1
    ConsoleCommand.objects.all().delete()  # the next example starts with nothing pending
    OutboxMessage.objects.filter(routing_key="host.host-a").delete()
