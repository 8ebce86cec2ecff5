"""Staff pages: lists, search, filters, and the actions (cancel, retry, re-send)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from orders.models import Host, Instance, Order, OutboxMessage

pytestmark = pytest.mark.django_db


def _action(admin_client, model: str, action: str, *pks: int):
    return admin_client.post(
        reverse(f"admin:orders_{model}_changelist"),
        {"action": action, "_selected_action": [str(pk) for pk in pks]},
        follow=True,
    )


def test_staff_see_and_search_orders(admin_client, order):
    url = reverse("admin:orders_order_changelist")

    found = admin_client.get(url, {"q": str(order.public_id)})
    missing = admin_client.get(url, {"q": "00000000-0000-0000-0000-000000000000"})

    assert str(order.public_id) in found.content.decode()
    assert str(order.public_id) not in missing.content.decode()
    assert admin_client.get(url, {"status__exact": "pending_payment"}).status_code == 200


def test_customers_cannot_open_the_admin(client, customer, order):
    client.force_login(customer)

    response = client.get(reverse("admin:orders_order_changelist"))

    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_the_cancel_action_deletes_the_vm(admin_client, instance):
    response = _action(admin_client, "order", "cancel_orders", instance.order_id)

    assert response.status_code == 200
    order = Order.objects.get(pk=instance.order_id)
    assert order.status == Order.Status.DELETING
    assert "staff" in order.cancel_reason
    assert OutboxMessage.objects.filter(routing_key="delete-vm").count() == 1


def test_the_cancel_action_skips_orders_already_cancelled(admin_client, order):
    _action(admin_client, "order", "cancel_orders", order.pk)

    response = _action(admin_client, "order", "cancel_orders", order.pk)

    assert "Cancelled 0 order(s); 1 could not be cancelled." in response.content.decode()
    assert Order.objects.get(pk=order.pk).status == Order.Status.CANCELLED


def test_the_retry_action_requests_a_new_vm_for_a_failed_instance(admin_client, instance):
    Instance.objects.filter(pk=instance.pk).update(status="failed", failure_reason="boot timeout")
    Order.objects.filter(pk=instance.order_id).update(status="failed")

    _action(admin_client, "instance", "retry", instance.pk)

    retried = Instance.objects.get(pk=instance.pk)
    assert retried.status == Instance.Status.REQUESTED
    assert retried.public_id != instance.public_id
    assert Order.objects.get(pk=instance.order_id).status == Order.Status.PAID
    assert OutboxMessage.objects.filter(routing_key="create-vm").count() == 2


def test_the_retry_action_refuses_a_healthy_instance(admin_client, instance):
    response = _action(admin_client, "instance", "retry", instance.pk)

    assert "only a failed instance" in response.content.decode()
    assert Instance.objects.get(pk=instance.pk).public_id == instance.public_id
    assert OutboxMessage.objects.count() == 1


def test_the_resend_action_queues_a_sent_row_again(admin_client, instance):
    row = OutboxMessage.objects.get()
    OutboxMessage.objects.filter(pk=row.pk).update(sent_at=timezone.now())

    _action(admin_client, "outboxmessage", "resend", row.pk)

    row.refresh_from_db()
    assert row.sent_at is None
    assert OutboxMessage.objects.count() == 1


def test_the_resend_action_refuses_a_superseded_create_vm(admin_client, instance):
    """issue 20: staff re-sent the create-vm of a vm-id a retry had replaced; the host booted a
    VM nobody owned with the customer's current password. The old row is refused now; the
    current one still goes."""
    Instance.objects.filter(pk=instance.pk).update(status="failed", failure_reason="boot timeout")
    Order.objects.filter(pk=instance.order_id).update(status="failed")
    _action(admin_client, "instance", "retry", instance.pk)
    old, current = OutboxMessage.objects.filter(routing_key="create-vm").order_by("id")
    OutboxMessage.objects.update(sent_at=timezone.now())

    response = _action(admin_client, "outboxmessage", "resend", old.pk, current.pk)

    assert "Refused 1 create-vm" in response.content.decode()
    old.refresh_from_db()
    current.refresh_from_db()
    assert old.sent_at is not None  # not queued again
    assert current.sent_at is None


def test_the_vm_password_never_appears_in_the_admin(admin_client, instance):
    row = OutboxMessage.objects.get()
    pages = [
        reverse("admin:orders_instance_changelist"),
        reverse("admin:orders_instance_change", args=[instance.pk]),
        reverse("admin:orders_order_change", args=[instance.order_id]),
        reverse("admin:orders_outboxmessage_changelist"),
        reverse("admin:orders_outboxmessage_change", args=[row.pk]),
    ]

    bodies = [admin_client.get(page).content.decode() for page in pages]

    assert all(instance.admin_password not in body for body in bodies)
    # Nor its encrypted form: a token is only as safe as the key, and staff need neither.
    assert all(instance.admin_password_encrypted not in body for body in bodies)
    assert instance.admin_username in bodies[4]  # the body is shown, masked
    assert "********" in bodies[4]


def test_a_lost_server_is_flagged_for_staff_with_the_hosts_reason(admin_client, instance):
    reason = "RabbitMQ did not answer; its log: {badmatch,#{}} (gave up after 3 restarts)"
    Instance.objects.filter(pk=instance.pk).update(status="lost", failure_reason=reason)

    page = admin_client.get(
        reverse("admin:orders_instance_changelist"), {"status__exact": "lost"}
    ).content.decode()

    assert "server down: RabbitMQ did not answer; its log: {badmatch,#{}}" in page


def test_silent_hosts_and_their_instances_are_shown(admin_client, instance, settings):
    settings.HOST_HEARTBEAT_TIMEOUT = 90
    old = timezone.now() - timedelta(seconds=300)
    Host.objects.create(host_id="host-quiet", last_heartbeat_at=old, capacity=2)
    Host.objects.create(host_id="host-alive", last_heartbeat_at=timezone.now(), capacity=2)
    Instance.objects.filter(pk=instance.pk).update(host_id="host-quiet", status="ready")

    hosts = admin_client.get(reverse("admin:orders_host_changelist")).content.decode()
    silent = admin_client.get(
        reverse("admin:orders_instance_changelist"), {"host_silent": "yes"}
    ).content.decode()

    assert hosts.count("silent since") == 1
    assert Host.objects.get(host_id="host-quiet").silent_since is not None
    assert str(instance.public_id) in silent

    Instance.objects.filter(pk=instance.pk).update(host_id="host-alive")
    alive = admin_client.get(
        reverse("admin:orders_instance_changelist"), {"host_silent": "yes"}
    ).content.decode()
    assert str(instance.public_id) not in alive


def test_webhook_receipts_are_listed(admin_client, order, post_webhook):
    from tests.orders.conftest import checkout_session, stripe_event

    event = stripe_event("checkout.session.completed", checkout_session(order))
    post_webhook(event)

    page = admin_client.get(reverse("admin:orders_webhookevent_changelist"), {"q": event["id"]})

    assert event["id"] in page.content.decode()


# -- lookups that could reveal a secret ----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("instance", {"admin_password__regex": "^"}),
        ("instance", {"admin_password__startswith": ""}),
        ("instance", {"admin_password": "x"}),
        ("order", {"instance__admin_password__regex": "^"}),
        ("order", {"user__password__regex": "^"}),
        ("outboxmessage", {"body__options__admin__password__regex": "^"}),
        ("outboxmessage", {"body__contains": "password"}),
        ("outboxmessage", {"body__icontains": "a"}),
        ("outboxmessage", {"instance__admin_password__regex": "^"}),
    ],
)
def test_lookups_on_secrets_and_bodies_are_refused(admin_client, instance, model, params):
    response = admin_client.get(reverse(f"admin:orders_{model}_changelist"), params)

    assert response.status_code == 400
    assert instance.admin_password not in response.content.decode()


def test_a_password_regex_cannot_tell_a_right_prefix_from_a_wrong_one(admin_client, instance):
    url = reverse("admin:orders_instance_changelist")
    right = admin_client.get(url, {"admin_password__regex": f"^{instance.admin_password[:4]}"})
    wrong = admin_client.get(url, {"admin_password__regex": "^\\x00"})

    assert (right.status_code, wrong.status_code) == (400, 400)
    assert right.content == wrong.content


def test_lookups_outside_the_lists_filters_are_refused(admin_client, instance):
    url = reverse("admin:orders_instance_changelist")

    assert admin_client.get(url, {"admin_username__regex": "^w"}).status_code == 400
    assert admin_client.get(url, {"failure_reason__contains": "x"}).status_code == 400


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("order", {"status__exact": "paid"}),
        ("order", {"plan__id__exact": "1"}),
        ("order", {"created_at__year": "2026"}),
        ("order", {"created_at__gte": "2026-01-01"}),
        ("instance", {"status__exact": "requested", "host_silent": "yes"}),
        ("instance", {"host_id": "host-a"}),
        ("outboxmessage", {"sent": "no", "routing_key__exact": "create-vm"}),
        (
            "webhookevent",
            {"livemode__exact": "0", "received_at__month": "11", "received_at__year": "2026"},
        ),
    ],
)
def test_the_lists_own_filters_still_work(admin_client, instance, model, params):
    response = admin_client.get(reverse(f"admin:orders_{model}_changelist"), params)

    assert response.status_code == 200


def test_the_password_is_masked_anywhere_in_an_outbox_body(admin_client, instance):
    row = OutboxMessage.objects.get()
    row.body = {**row.body, "extra": [{"password": "hunter2-nested"}]}
    row.save()

    page = admin_client.get(reverse("admin:orders_outboxmessage_change", args=[row.pk]))

    html = page.content.decode()
    assert instance.admin_password not in html
    assert "hunter2-nested" not in html
    assert html.count("********") == 2


def test_a_stripe_error_in_the_cancel_action_is_a_message(admin_client, instance, settings):
    from unittest import mock

    import stripe

    settings.STRIPE_SECRET_KEY = "sk_test_warren"
    Order.objects.filter(pk=instance.order_id).update(stripe_subscription_id="sub_123")

    with mock.patch(
        "stripe.SubscriptionService.cancel", side_effect=stripe.APIConnectionError("down")
    ):
        response = _action(admin_client, "order", "cancel_orders", instance.order_id)

    assert response.status_code == 200
    html = response.content.decode()
    assert "not cancelled" in html
    assert "Cancelled 0 order(s); 1 could not be cancelled." in html
    assert Order.objects.get(pk=instance.order_id).status == Order.Status.PAID
    assert not OutboxMessage.objects.filter(routing_key="delete-vm").exists()


def _refund_pending(order: Order, payment: str = "pi_test_1") -> Order:
    now = timezone.now()
    Order.objects.filter(pk=order.pk).update(
        status="cancelled",
        cancelled_at=now,
        refund_status="pending",
        refund_of=payment,
        refund_requested_at=now,
        refund_error="APIConnectionError: Stripe unavailable",
    )
    return Order.objects.get(pk=order.pk)


def test_staff_see_pending_refunds_and_filter_them(admin_client, order):
    _refund_pending(order)
    url = reverse("admin:orders_order_changelist")

    response = admin_client.get(url, {"refund_status__exact": "pending"})

    html = response.content.decode()
    assert response.status_code == 200
    assert str(order.public_id) in html
    assert "APIConnectionError" in html


def test_staff_retry_a_pending_refund(admin_client, order, settings):
    from unittest import mock

    import stripe

    settings.STRIPE_SECRET_KEY = "sk_test_warren"
    _refund_pending(order)
    refund = stripe.StripeObject.construct_from({"id": "re_test_9"}, "sk_test_warren")

    with mock.patch("stripe.RefundService.create", return_value=refund) as create:
        response = _action(admin_client, "order", "retry_refunds", order.pk)

    create.assert_called_once()
    assert "refunded" in response.content.decode()
    order = Order.objects.get(pk=order.pk)
    assert (order.refund_status, order.stripe_refund_id) == ("refunded", "re_test_9")


def test_a_failed_retry_says_why_and_stays_pending(admin_client, order, settings):
    from unittest import mock

    import stripe

    settings.STRIPE_SECRET_KEY = "sk_test_warren"
    _refund_pending(order)

    with mock.patch("stripe.RefundService.create", side_effect=stripe.APIConnectionError("x")):
        response = _action(admin_client, "order", "retry_refunds", order.pk)

    assert response.status_code == 200
    assert "still pending" in response.content.decode()
    assert Order.objects.get(pk=order.pk).refund_status == "pending"


def test_the_admin_index_names_the_models_in_plain_english(admin_client):
    """Django's default plural adds an s ("Activitys", "Waitlist entrys"); the Meta says it."""
    page = admin_client.get(reverse("admin:index")).content.decode()

    assert "Activities" in page
    assert "Waitlist entries" in page
    assert "Activitys" not in page
    assert "entrys" not in page
