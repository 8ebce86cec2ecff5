"""Servers and their jobs through the API: buying (offline), cancelling, the console's actions
as pollable jobs (the console's own commands), credentials, alarms and metrics."""

from __future__ import annotations

from django.test import override_settings

from orders.models import Alarm, ConsoleCommand, Order, OutboxMessage
from tests.orders.console_support import install_fake_stripe, outcome
from vmbackend.protocol import messages


def test_buying_without_paying_gives_the_payment_page(alice):
    status, body, _ = alice.api.call("POST", "/servers", {"plan": "api-large"})
    assert status == 201 and body["status"] == "pending_payment"
    assert body["payment_url"].endswith(f"/orders/{body['id']}/pay/")
    assert body["payment_url"].startswith("http://")


def test_buying_with_the_offline_payment_pays_through_the_webhook_path(alice):
    status, body, _ = alice.api.call("POST", "/servers", {"plan": "api-large", "pay_offline": True})
    assert status == 201 and body["status"] == "paid" and body["payment_url"] is None
    order = Order.objects.get(public_id=body["id"])
    assert order.user == alice.user and order.paid_at is not None
    assert OutboxMessage.objects.filter(instance__order=order, sent_at=None).exists()


@override_settings(STRIPE_SECRET_KEY="sk_test_x")
def test_offline_payment_is_refused_when_stripe_is_on(alice):
    before = Order.objects.count()
    status, body, _ = alice.api.call("POST", "/servers", {"plan": "api-large", "pay_offline": True})
    assert status == 409 and body["type"].endswith("/offline-off")
    assert Order.objects.count() == before


def test_a_sold_out_plan_is_refused(alice, monkeypatch):
    from orders.fleet import rooms

    monkeypatch.setattr(rooms, "plan_available", lambda plan, now=None: False)
    status, body, _ = alice.api.call("POST", "/servers", {"plan": "api-large"})
    assert status == 409 and "sold out" in body["detail"]


def test_cancelling_twice(alice):
    path = f"/servers/{alice.order.public_id}/cancel"
    status, body, _ = alice.api.call("POST", path)
    assert status == 200 and body["status"] in ("deleting", "cancelled")
    status, body, _ = alice.api.call("POST", path)
    assert status == 409


def test_a_restart_is_a_job_pending_running_then_done(alice):
    status, job, _ = alice.api.call("POST", f"/servers/{alice.order.public_id}/restart")
    assert status == 202 and job["kind"] == "restart" and job["status"] == "pending"
    command = ConsoleCommand.objects.get(request_id=job["id"])  # the console's own command
    assert command.instance == alice.instance
    from django.utils import timezone

    OutboxMessage.objects.filter(instance=alice.instance).update(sent_at=timezone.now())
    assert alice.api.call("GET", f"/jobs/{job['id']}")[1]["status"] == "running"
    assert outcome(alice.instance, command.request_id, messages.RESTART_VM) == "applied"
    done = alice.api.call("GET", f"/jobs/{job['id']}")[1]
    assert done["status"] == "done" and done["finished_at"] is not None
    listed = alice.api.call("GET", f"/servers/{alice.order.public_id}/jobs")[1]["items"]
    assert listed[0]["id"] == job["id"]


def test_a_failed_job_says_why(alice):
    _, job, _ = alice.api.call("POST", f"/servers/{alice.order.public_id}/rotate-password")
    assert job["kind"] == "rotate-password"
    outcome(alice.instance, job["id"], messages.SET_ADMIN_PASSWORD, failed="disk full")
    failed = alice.api.call("GET", f"/jobs/{job['id']}")[1]
    assert failed["status"] == "failed" and "disk full" in failed["reason"]


def test_a_second_action_while_one_runs_is_409(alice):
    server = alice.order.public_id
    assert alice.api.call("POST", f"/servers/{server}/restart")[0] == 202
    status, body, _ = alice.api.call("POST", f"/servers/{server}/rotate-password")
    assert status == 409 and "in progress" in body["detail"]


def test_a_plan_change_is_a_job_with_both_plans(alice):
    path = f"/servers/{alice.order.public_id}/change-plan"
    status, job, _ = alice.api.call("POST", path, {"plan": "api-large"})
    assert status == 202
    assert (job["kind"], job["from_plan"], job["to_plan"]) == (
        "change-plan",
        "api-small",
        "api-large",
    )
    status, body, _ = alice.api.call("POST", path, {"plan": "api-nothing"})
    assert status == 422


def test_the_credentials_are_the_servers_and_need_a_write_token(alice):
    status, body, _ = alice.api.call("GET", f"/servers/{alice.order.public_id}/credentials")
    assert status == 200 and body["password"] == alice.instance.admin_password
    assert body["username"] == alice.instance.admin_username
    status, _, _ = alice.reader.call("GET", f"/servers/{alice.order.public_id}/credentials")
    assert status == 403


def test_no_credentials_before_the_server_is_ready(alice):
    _, body, _ = alice.api.call("POST", "/servers", {"plan": "api-large", "pay_offline": True})
    status, problem, _ = alice.api.call("GET", f"/servers/{body['id']}/credentials")
    assert status == 404 and "not ready" in problem["detail"]


def test_alarms_added_listed_and_removed(alice):
    path = f"/servers/{alice.order.public_id}/alarms"
    status, alarm, _ = alice.api.call(
        "POST", path, {"kind": "message_rate", "threshold": 10, "minutes": 3}
    )
    assert status == 201 and alarm["minutes"] == 3 and not alarm["is_default"]
    ids = [a["id"] for a in alice.api.call("GET", path)[1]["items"]]
    assert alarm["id"] in ids
    assert alice.api.call("DELETE", f"{path}/{alarm['id']}")[0] == 204
    assert not Alarm.objects.filter(pk=alarm["id"]).exists()
    assert alice.api.call("DELETE", f"{path}/{alarm['id']}")[0] == 404


def test_a_default_alarm_cannot_be_removed_and_bad_alarms_say_why(alice):
    from orders.monitoring.alarms import ensure_default_alarms

    ensure_default_alarms(alice.instance)
    default = Alarm.objects.filter(instance=alice.instance, is_default=True).first()
    path = f"/servers/{alice.order.public_id}/alarms"
    assert alice.api.call("DELETE", f"{path}/{default.pk}")[0] == 404
    status, body, _ = alice.api.call(
        "POST", path, {"kind": "connections", "threshold": -1, "minutes": 3}
    )
    assert status == 422 and "threshold" in body["detail"]


def test_metrics_series_and_a_bad_range(alice):
    path = f"/servers/{alice.order.public_id}/metrics"
    status, body, _ = alice.api.call("GET", path + "?range=24h")
    assert status == 200 and body["range"] == "24h"
    assert body["points"][0]["values"]["messages_ready"] == 3
    assert alice.api.call("GET", path + "?range=1y")[0] == 400


def test_with_stripe_the_answer_is_stripes_checkout_page(alice, monkeypatch, settings):
    fake = install_fake_stripe(monkeypatch, settings)
    fake.answer(
        "POST",
        "/v1/checkout/sessions",
        {
            "id": "cs_test_api",
            "object": "checkout.session",
            "url": "https://checkout.stripe.test/x",
        },
    )
    status, body, _ = alice.api.call("POST", "/servers", {"plan": "api-large"})
    assert status == 201 and body["payment_url"] == "https://checkout.stripe.test/x"
    # A GET later has no payment link (Stripe's URL is not kept); the order waits for the webhook.
    assert alice.api.call("GET", f"/servers/{body['id']}")[1]["payment_url"] is None


def test_stripe_down_is_a_503_problem(alice, monkeypatch, settings):
    fake = install_fake_stripe(monkeypatch, settings)
    fake.answer("POST", "/v1/checkout/sessions", {"error": {"type": "api_error"}}, status=500)
    status, body, response = alice.api.call("POST", "/servers", {"plan": "api-large"})
    assert status == 503 and response["Content-Type"] == "application/problem+json"
    assert body["type"].endswith("/payment-provider")


def test_stripe_refusing_to_cancel_changes_nothing(alice, monkeypatch, settings):
    fake = install_fake_stripe(monkeypatch, settings)
    Order.objects.filter(pk=alice.order.pk).update(stripe_subscription_id="sub_api")
    path = "/v1/subscriptions/sub_api"
    fake.answer("DELETE", path, {"error": {"type": "api_error"}}, status=500)
    status, body, _ = alice.api.call("POST", f"/servers/{alice.order.public_id}/cancel")
    assert status == 503
    assert Order.objects.get(pk=alice.order.pk).status == "ready"


def test_a_refused_offline_payment_is_a_502_problem(alice, monkeypatch):
    from orders.billing import webhooks

    def refuse(**kwargs):
        raise webhooks.WebhookError("bad signature")

    monkeypatch.setattr("orders.billing.offline_checkout.process_webhook", refuse)
    status, body, _ = alice.api.call("POST", "/servers", {"plan": "api-large", "pay_offline": True})
    assert status == 502 and body["type"].endswith("/payment")
