"""The customer's order pages and the Stripe webhook endpoint (orders/web/orders.py, billing.py).

Personas: the owner, another customer, a stranger (anonymous) and staff. An order belongs to its
owner only: everyone else gets the 404 an unknown order gets (staff use the admin).
"""

import json
import time
import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from orders.billing.checkout import CheckoutError
from orders.billing.offline_checkout import OfflinePaymentError
from orders.models import Instance, Order, WebhookEvent
from orders.web import billing as billing_views
from orders.web import orders as views
from store.models import Plan
from tests.stripe_signing import stripe_signature

pytestmark = pytest.mark.django_db

WEBHOOK_SECRET = "whsec_test_views_secret"
PASSWORD = "s3cret-Admin-Pa55word-xyz"


# -- personas and orders --------------------------------------------------------------------


def _user(name: str, **extra: Any) -> AbstractUser:
    return get_user_model().objects.create_user(
        name, f"{name}@example.com", "pw-123456789", **extra
    )


@pytest.fixture
def owner() -> AbstractUser:
    return _user("owner")


@pytest.fixture
def other() -> AbstractUser:
    return _user("other")


@pytest.fixture
def staff() -> AbstractUser:
    return _user("staff", is_staff=True, is_superuser=True)


@pytest.fixture
def plan() -> Plan:
    return Plan.objects.create(
        slug="bunny",
        name="Bunny",
        memory_mb=512,
        vcpus=1,
        disk_gb=4,
        max_connections=100,
        max_queues=200,
        monthly_price_cents=900,
    )


@pytest.fixture
def order(owner: AbstractUser, plan: Plan) -> Order:
    return Order.objects.create(user=owner, plan=plan)


def _paid(order: Order, order_status: str = Order.Status.PAID, /, **instance: Any) -> Order:
    """Put `order` in a paid state with an Instance, as the webhook and event consumer would."""
    Order.objects.filter(pk=order.pk).update(status=order_status, paid_at=timezone.now())
    fields = {"admin_username": "warren-abc123", "admin_password": PASSWORD, **instance}
    Instance.objects.create(order=order, **fields)
    order.refresh_from_db()
    return order


def _ready(order: Order) -> Order:
    return _paid(
        order,
        Order.Status.READY,
        status=Instance.Status.READY,
        management_url="http://127.0.0.1:15001/",
        amqp_url="amqp://warren-abc123@127.0.0.1:5701/",  # docs/protocol.md: never a password
    )


def _login(client: Client, user: AbstractUser) -> Client:
    client.force_login(user)
    return client


def _url(name: str, order: Order) -> str:
    return reverse(f"orders:{name}", args=[order.public_id])


# -- list -----------------------------------------------------------------------------------


def test_list_sends_a_stranger_to_login(client: Client) -> None:
    response = client.get(reverse("orders:list"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_list_shows_only_the_customers_own_orders(
    client: Client, order: Order, other: AbstractUser, plan: Plan
) -> None:
    others = Order.objects.create(user=other, plan=plan)
    response = _login(client, order.user).get(reverse("orders:list"))
    assert response.status_code == 200
    assert list(response.context["orders"]) == [order]
    html = response.content.decode()
    assert _url("detail", order) in html
    assert str(others.public_id) not in html


# -- detail ---------------------------------------------------------------------------------


def test_detail_sends_a_stranger_to_login(client: Client, order: Order) -> None:
    response = client.get(_url("detail", order))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_detail_is_404_for_another_customer(
    client: Client, order: Order, other: AbstractUser
) -> None:
    assert _login(client, other).get(_url("detail", order)).status_code == 404


def test_detail_is_404_for_staff_who_use_the_admin(
    client: Client, order: Order, staff: AbstractUser
) -> None:
    assert _login(client, staff).get(_url("detail", order)).status_code == 404


def test_staff_see_the_order_in_the_admin_without_the_password(
    client: Client, order: Order, staff: AbstractUser
) -> None:
    _ready(order)
    response = _login(client, staff).get(reverse("admin:orders_order_change", args=[order.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert str(order.public_id) in html
    assert PASSWORD not in html


def test_detail_is_404_for_an_unknown_order(client: Client, owner: AbstractUser) -> None:
    url = reverse("orders:detail", args=[uuid.uuid4()])
    assert _login(client, owner).get(url).status_code == 404


def test_detail_is_not_reachable_by_integer_id(client: Client, order: Order) -> None:
    assert _login(client, order.user).get(f"/orders/{order.pk}/").status_code == 404


@override_settings(STRIPE_SECRET_KEY="")
def test_detail_of_an_unpaid_order_waits_for_payment(client: Client, order: Order) -> None:
    response = _login(client, order.user).get(_url("detail", order))
    assert response.status_code == 200
    html = response.content.decode()
    assert "waiting for the payment to be confirmed" in html
    assert 'data-final="false"' in html
    assert 'http-equiv="refresh"' in html  # the no-JS fallback
    assert _url("offline_checkout", order) in html  # "Pay now" while payments are offline
    assert [s["state"] for s in response.context["steps"]] == ["current", "todo", "todo", "todo"]


def test_detail_of_a_paid_order_shows_the_vm_starting(client: Client, order: Order) -> None:
    _paid(
        order,
        Order.Status.PROVISIONING,
        stage=Instance.Stage.VM_STARTING,
        status=Instance.Status.BOOTING,
    )
    response = _login(client, order.user).get(_url("detail", order))
    steps = {s["key"]: s["state"] for s in response.context["steps"]}
    assert steps == {
        "paid": "done",
        "vm_starting": "current",
        "rabbitmq_starting": "todo",
        "ready": "todo",
    }
    assert "Provisioning" in response.content.decode()


def test_detail_shows_rabbitmq_starting(client: Client, order: Order) -> None:
    _paid(order, stage=Instance.Stage.RABBITMQ_STARTING, status=Instance.Status.BOOTING)
    response = _login(client, order.user).get(_url("detail", order))
    steps = {s["key"]: s["state"] for s in response.context["steps"]}
    assert steps["vm_starting"] == "done"
    assert steps["rabbitmq_starting"] == "current"


def test_detail_of_a_ready_order_shows_urls_but_not_the_password(
    client: Client, order: Order
) -> None:
    _ready(order)
    response = _login(client, order.user).get(_url("detail", order))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'href="http://127.0.0.1:15001/"' in html
    assert "amqp://warren-abc123@127.0.0.1:5701/" in html
    assert "warren-abc123" in html
    assert PASSWORD not in html
    assert _url("credentials", order) in html
    assert 'data-final="true"' in html
    assert 'http-equiv="refresh"' not in html
    assert "no-store" in response["Cache-Control"]


def test_detail_cuts_a_password_out_of_the_urls(client: Client, order: Order) -> None:
    _ready(order)
    Instance.objects.filter(order=order).update(
        amqp_url=f"amqp://warren-abc123:{PASSWORD}@127.0.0.1:5701/vhost",
        management_url=f"http://warren-abc123:{PASSWORD}@127.0.0.1:15001/",
    )
    html = _login(client, order.user).get(_url("detail", order)).content.decode()
    assert "amqp://warren-abc123@127.0.0.1:5701/vhost" in html
    # A management URL has no user info by the contract (vmbackend/protocol/urls.py): hidden.
    assert 'id="management-url"' in html and "127.0.0.1:15001" not in html
    assert PASSWORD not in html


def test_detail_of_a_failed_order_gives_the_reason(client: Client, order: Order) -> None:
    _paid(
        order,
        Order.Status.FAILED,
        status=Instance.Status.FAILED,
        failure_reason="RabbitMQ did not start within 10 minutes",
    )
    html = _login(client, order.user).get(_url("detail", order)).content.decode()
    assert "We could not set up your server" in html
    assert "RabbitMQ did not start within 10 minutes" in html
    # Staff may retry a failed order: the page keeps following it.
    assert 'data-final="false"' in html


def _crashed(order: Order, **fields: Any) -> Instance:
    instance = Instance.objects.get(order=order)
    Instance.objects.filter(pk=instance.pk).update(**fields)
    instance.refresh_from_db()
    return instance


def test_detail_of_a_server_being_restarted_tells_the_truth_and_keeps_following(
    client: Client, order: Order
) -> None:
    _ready(order)
    crash = timezone.now().replace(hour=14, minute=3)
    _crashed(order, last_crash_at=crash, restart_count=1)
    html = _login(client, order.user).get(_url("detail", order)).content.decode()
    assert "Your server stopped unexpectedly at 14:03" in html
    assert "is being restarted" in html
    assert "could not set up" not in html and "Provisioning failed" not in html
    assert 'data-final="false"' in html  # the page follows the restart
    assert 'href="http://127.0.0.1:15001/"' in html  # same URLs meanwhile


def test_detail_of_a_restarted_server_says_when_it_stopped_and_came_back(
    client: Client, order: Order
) -> None:
    _ready(order)
    crash = timezone.now().replace(hour=14, minute=3)
    _crashed(order, last_crash_at=crash, last_restart_at=crash.replace(minute=5), restart_count=1)
    response = _login(client, order.user).get(_url("status", order))
    data = response.json()
    assert (
        "Your server stopped unexpectedly at 14:03 UTC and was restarted at 14:05 UTC."
        in data["html"]
    )
    assert data["final"] is True
    assert data["status_label"] == "Ready"


def test_detail_of_a_server_that_ran_and_could_not_be_restarted_says_it_is_down(
    client: Client, order: Order
) -> None:
    _paid(
        order,
        Order.Status.FAILED,
        status=Instance.Status.LOST,
        ready_at=timezone.now(),
        last_crash_at=timezone.now().replace(hour=14, minute=3),
        restart_count=1,
        failure_reason="QEMU process exited unexpectedly (gave up after 3 restarts within 900 s)",
    )
    response = _login(client, order.user).get(_url("detail", order))
    html = response.content.decode()
    assert "Your server is down." in html
    assert "stopped unexpectedly at 14:03 UTC" in html
    assert "Our team has been alerted" in html
    assert "We could not set up your server" not in html
    assert "Provisioning failed" not in html and "Server down" in html
    assert _login(client, order.user).get(_url("status", order)).json()["status_label"] == (
        "Server down"
    )
    listing = client.get(reverse("orders:list")).content.decode()
    assert "Server down" in listing and "Provisioning failed" not in listing


def test_detail_of_a_deleting_order_says_so(client: Client, order: Order) -> None:
    _paid(order, Order.Status.DELETING, status=Instance.Status.DELETING)
    html = _login(client, order.user).get(_url("detail", order)).content.decode()
    assert "is being deleted" in html
    assert 'data-final="false"' in html
    assert _url("cancel", order) not in html


def test_detail_of_a_deleted_order_says_so(client: Client, order: Order) -> None:
    _paid(order, Order.Status.DELETED, status=Instance.Status.DELETED)
    html = _login(client, order.user).get(_url("detail", order)).content.decode()
    assert "your server has been deleted" in html
    assert 'data-final="true"' in html


# -- status JSON ----------------------------------------------------------------------------


def test_status_gives_the_state_and_the_fragment(client: Client, order: Order) -> None:
    _paid(order, stage=Instance.Stage.RABBITMQ_STARTING, status=Instance.Status.BOOTING)
    response = _login(client, order.user).get(_url("status", order))
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    data = response.json()
    assert data["order"] == str(order.public_id)
    assert data["status"] == "paid"
    assert data["stage"] == "rabbitmq_starting"
    assert data["final"] is False
    assert data["version"].startswith("paid:booting:rabbitmq_starting")
    assert 'class="current" data-step="rabbitmq_starting"' in data["html"]


def test_status_is_final_once_ready_and_holds_no_password(client: Client, order: Order) -> None:
    _ready(order)
    data = _login(client, order.user).get(_url("status", order)).json()
    assert data["final"] is True
    assert data["status"] == "ready"
    assert "http://127.0.0.1:15001/" in data["html"]
    assert PASSWORD not in json.dumps(data)


def test_status_is_404_for_another_customer(
    client: Client, order: Order, other: AbstractUser
) -> None:
    assert _login(client, other).get(_url("status", order)).status_code == 404


def test_status_sends_a_stranger_to_login(client: Client, order: Order) -> None:
    assert client.get(_url("status", order)).status_code == 302


# -- credentials ----------------------------------------------------------------------------


def test_credentials_are_revealed_to_the_owner_and_not_cached(client: Client, order: Order) -> None:
    _ready(order)
    response = _login(client, order.user).post(
        _url("credentials", order), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 200
    assert response.json() == {"username": "warren-abc123", "password": PASSWORD}
    assert "no-store" in response["Cache-Control"]


def test_credentials_without_js_render_a_page_that_is_not_cached(
    client: Client, order: Order
) -> None:
    _ready(order)
    response = _login(client, order.user).post(_url("credentials", order))
    assert response.status_code == 200
    assert PASSWORD in response.content.decode()
    assert "no-store" in response["Cache-Control"]


def test_credentials_need_a_post(client: Client, order: Order) -> None:
    _ready(order)
    assert _login(client, order.user).get(_url("credentials", order)).status_code == 405


def test_credentials_are_404_for_another_customer(
    client: Client, order: Order, other: AbstractUser
) -> None:
    _ready(order)
    response = _login(client, other).post(
        _url("credentials", order), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 404
    assert PASSWORD not in response.content.decode()


def test_credentials_are_404_for_staff(client: Client, order: Order, staff: AbstractUser) -> None:
    _ready(order)
    assert _login(client, staff).post(_url("credentials", order)).status_code == 404


def test_credentials_send_a_stranger_to_login(client: Client, order: Order) -> None:
    _ready(order)
    response = client.post(_url("credentials", order))
    assert response.status_code == 302
    assert PASSWORD not in response["Location"]


def test_credentials_are_404_before_the_server_is_ready(client: Client, order: Order) -> None:
    _paid(order)
    assert _login(client, order.user).post(_url("credentials", order)).status_code == 404


# -- checkout -------------------------------------------------------------------------------


def test_checkout_sends_a_stranger_to_login(client: Client, plan: Plan) -> None:
    response = client.post(reverse("orders:checkout", args=[plan.slug]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert not Order.objects.exists()


@override_settings(STRIPE_SECRET_KEY="")
def test_checkout_creates_a_pending_order_and_goes_to_the_offline_payment(
    client: Client, owner: AbstractUser, plan: Plan
) -> None:
    response = _login(client, owner).post(reverse("orders:checkout", args=[plan.slug]))
    order = Order.objects.get()
    assert (order.user, order.plan, order.status) == (owner, plan, Order.Status.PENDING_PAYMENT)
    assert response.status_code == 302
    assert response["Location"] == _url("offline_checkout", order)


@override_settings(STRIPE_SECRET_KEY="sk_test_123")
def test_checkout_says_so_when_stripe_is_unavailable(
    client: Client, owner: AbstractUser, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(**kwargs: Any) -> None:
        raise CheckoutError("Payment provider unavailable, please try again")

    monkeypatch.setattr(billing_views, "start_checkout", unavailable)
    response = _login(client, owner).post(reverse("orders:checkout", args=[plan.slug]), follow=True)
    assert response.redirect_chain == [(reverse("store:pricing"), 302)]
    assert "Payment provider unavailable" in response.content.decode()


def test_checkout_of_an_inactive_plan_is_404(
    client: Client, owner: AbstractUser, plan: Plan
) -> None:
    Plan.objects.filter(pk=plan.pk).update(is_active=False)
    response = _login(client, owner).post(reverse("orders:checkout", args=[plan.slug]))
    assert response.status_code == 404
    assert not Order.objects.exists()


def test_checkout_by_get_goes_back_to_the_plan(
    client: Client, owner: AbstractUser, plan: Plan
) -> None:
    response = _login(client, owner).get(reverse("orders:checkout", args=[plan.slug]))
    assert response["Location"] == reverse("store:pricing") + "#plan-bunny"
    assert not Order.objects.exists()


# -- offline checkout -----------------------------------------------------------------------


@override_settings(STRIPE_SECRET_KEY="")
def test_offline_checkout_shows_the_pay_button(client: Client, order: Order) -> None:
    response = _login(client, order.user).get(_url("offline_checkout", order))
    assert response.status_code == 200
    assert "Pay (offline test payment)" in response.content.decode()


@override_settings(STRIPE_SECRET_KEY="sk_test_123")
def test_offline_checkout_is_404_when_stripe_is_configured(client: Client, order: Order) -> None:
    _login(client, order.user)
    assert client.get(_url("offline_checkout", order)).status_code == 404
    assert client.post(_url("offline_checkout", order)).status_code == 404
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING_PAYMENT


@override_settings(STRIPE_SECRET_KEY="")
def test_offline_checkout_is_404_for_another_customer(
    client: Client, order: Order, other: AbstractUser
) -> None:
    assert _login(client, other).post(_url("offline_checkout", order)).status_code == 404


@override_settings(STRIPE_SECRET_KEY="")
def test_offline_checkout_pays_the_order(client: Client, order: Order) -> None:
    response = _login(client, order.user).post(_url("offline_checkout", order))
    assert response["Location"] == _url("success", order)
    order.refresh_from_db()
    assert order.status == Order.Status.PAID


@override_settings(STRIPE_SECRET_KEY="")
def test_offline_checkout_says_so_when_the_payment_fails(
    client: Client, order: Order, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(**kwargs: Any) -> None:
        raise OfflinePaymentError("webhook endpoint answered 400")

    monkeypatch.setattr(billing_views, "complete_offline_payment", refused)
    response = _login(client, order.user).post(_url("offline_checkout", order), follow=True)
    assert response.redirect_chain == [(_url("offline_checkout", order), 302)]
    assert "The payment did not go through" in response.content.decode()
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING_PAYMENT


@override_settings(STRIPE_SECRET_KEY="")
def test_offline_checkout_of_a_paid_order_goes_to_the_order(client: Client, order: Order) -> None:
    _paid(order)
    response = _login(client, order.user).get(_url("offline_checkout", order))
    assert response["Location"] == _url("detail", order)


# -- success and checkout-cancelled pages ---------------------------------------------------


def test_success_does_not_claim_the_payment_is_done(client: Client, order: Order) -> None:
    response = _login(client, order.user).get(_url("success", order))
    html = response.content.decode()
    assert "confirming your payment" in html
    assert _url("detail", order) in html
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING_PAYMENT


def test_success_is_404_for_another_customer(
    client: Client, order: Order, other: AbstractUser
) -> None:
    assert _login(client, other).get(_url("success", order)).status_code == 404


def test_cancelled_says_nothing_was_charged(client: Client, order: Order) -> None:
    html = _login(client, order.user).get(_url("cancelled", order)).content.decode()
    assert "Nothing was charged" in html


def test_cancelled_is_404_for_another_customer(
    client: Client, order: Order, other: AbstractUser
) -> None:
    assert _login(client, other).get(_url("cancelled", order)).status_code == 404


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_of_an_unpaid_order_cancels_it(client: Client, order: Order) -> None:
    response = _login(client, order.user).post(_url("cancel", order))
    assert response["Location"] == _url("detail", order)
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED


def test_cancel_of_a_ready_order_deletes_the_vm(client: Client, order: Order) -> None:
    _ready(order)
    response = _login(client, order.user).post(_url("cancel", order), follow=True)
    order.refresh_from_db()
    assert order.status == Order.Status.DELETING
    assert order.instance.status == Instance.Status.DELETING
    assert order.instance.outbox_messages.filter(routing_key="delete-vm").count() == 1
    assert "is being deleted" in response.content.decode()


def test_cancel_says_so_when_stripe_refuses(
    client: Client, order: Order, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(**kwargs: Any) -> None:
        raise CheckoutError("Could not cancel the subscription")

    _ready(order)
    monkeypatch.setattr(views, "cancel_order", refused)
    response = _login(client, order.user).post(_url("cancel", order), follow=True)
    assert "Could not cancel the subscription" in response.content.decode()
    order.refresh_from_db()
    assert order.status == Order.Status.READY


def test_cancel_needs_a_post(client: Client, order: Order) -> None:
    assert _login(client, order.user).get(_url("cancel", order)).status_code == 405
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING_PAYMENT


def test_cancel_is_404_for_another_customer(
    client: Client, order: Order, other: AbstractUser
) -> None:
    assert _login(client, other).post(_url("cancel", order)).status_code == 404
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING_PAYMENT


def test_cancel_of_a_deleted_order_changes_nothing(client: Client, order: Order) -> None:
    _paid(order, Order.Status.DELETED, status=Instance.Status.DELETED)
    response = _login(client, order.user).post(_url("cancel", order))
    assert response.status_code == 302
    order.refresh_from_db()
    assert order.status == Order.Status.DELETED


# -- Stripe webhook endpoint ----------------------------------------------------------------


def _checkout_completed(order: Order) -> bytes:
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "livemode": False,
        "data": {
            "object": {
                "id": f"cs_test_{uuid.uuid4().hex}",
                "object": "checkout.session",
                "mode": "subscription",
                "payment_status": "paid",
                "client_reference_id": str(order.public_id),
                "metadata": {"order_id": str(order.public_id)},
                "customer": "cus_test_1",
                "subscription": "sub_test_1",
            }
        },
    }
    return json.dumps(event).encode()


@override_settings(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
def test_webhook_accepts_a_signed_event_and_the_order_is_paid(client: Client, order: Order) -> None:
    body = _checkout_completed(order)
    response = client.post(
        reverse("orders:stripe_webhook"),
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=stripe_signature(body, WEBHOOK_SECRET),
    )
    assert response.status_code == 200
    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    assert WebhookEvent.objects.count() == 1


@override_settings(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
def test_webhook_rejects_a_bad_signature(client: Client, order: Order) -> None:
    body = _checkout_completed(order)
    response = client.post(
        reverse("orders:stripe_webhook"),
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=stripe_signature(body, "whsec_someone_else"),
    )
    assert response.status_code == 400
    order.refresh_from_db()
    assert order.status == Order.Status.PENDING_PAYMENT
    assert not WebhookEvent.objects.exists()


@override_settings(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
def test_webhook_rejects_a_missing_signature(client: Client, order: Order) -> None:
    response = client.post(
        reverse("orders:stripe_webhook"),
        _checkout_completed(order),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


@override_settings(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, STRIPE_WEBHOOK_TOLERANCE=300)
def test_webhook_rejects_a_stale_signature(client: Client, order: Order) -> None:
    body = _checkout_completed(order)
    response = client.post(
        reverse("orders:stripe_webhook"),
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=stripe_signature(
            body, WEBHOOK_SECRET, timestamp=int(time.time()) - 301
        ),
    )
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


@override_settings(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
def test_webhook_rejects_malformed_json(client: Client) -> None:
    body = b"{not json"
    response = client.post(
        reverse("orders:stripe_webhook"),
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=stripe_signature(body, WEBHOOK_SECRET),
    )
    assert response.status_code == 400


def test_webhook_needs_a_post(client: Client) -> None:
    assert client.get(reverse("orders:stripe_webhook")).status_code == 405


def test_webhook_needs_no_csrf_token(order: Order) -> None:
    csrf_client = Client(enforce_csrf_checks=True)
    body = b"{}"
    response = csrf_client.post(
        reverse("orders:stripe_webhook"),
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE="t=1,v1=00",
    )
    assert response.status_code == 400  # reached the view: a signature problem, not a 403


def test_detail_of_a_cancelled_order_shows_its_refund(client: Client, order: Order) -> None:
    refunded_at = timezone.now().replace(year=2026, month=11, day=30)
    Order.objects.filter(pk=order.pk).update(
        status="cancelled",
        cancelled_at=refunded_at,
        refund_status="refunded",
        refund_requested_at=refunded_at,
        refunded_at=refunded_at,
        stripe_refund_id="re_test_1",
        stripe_subscription_id="sub_test_1",
    )
    _login(client, order.user)

    html = client.get(_url("detail", order)).content.decode()

    assert "refunded on 30 Nov 2026" in html
    assert "the subscription was cancelled" in html


def test_detail_of_a_cancelled_order_shows_a_pending_refund(client: Client, order: Order) -> None:
    Order.objects.filter(pk=order.pk).update(
        status="cancelled",
        cancelled_at=timezone.now(),
        refund_status="pending",
        refund_requested_at=timezone.now(),
        refund_error="APIConnectionError",
    )
    _login(client, order.user)

    html = client.get(_url("detail", order)).content.decode()

    assert "We are refunding it" in html
    assert "APIConnectionError" not in html  # staff's business, not the customer's
