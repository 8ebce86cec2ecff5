"""Customer pages for orders, and the Stripe webhook endpoint. Thin: parse, call a service, render.

Access rule: an order is visible to its owner only. Anyone else (another customer, staff) gets the
same 404 as for an order that does not exist; staff look at orders in the admin.
"""

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from orders.billing.cancellation import cancel_order
from orders.billing.checkout import CheckoutError, billing_portal_url, start_checkout
from orders.billing.offline_checkout import (
    OfflinePaymentError,
    complete_offline_payment,
    offline_payments_enabled,
)
from orders.billing.webhooks import WebhookError, process_webhook
from orders.console import commands as console
from orders.console import page
from orders.core.provisioning import ca_certificate_pem
from orders.fleet import evacuation, rooms
from orders.models import Instance, Order
from orders.monitoring import metrics_page
from orders.monitoring.alarms import AlarmError, add_alarm, alarms_context, remove_alarm
from orders.web import order_wait
from store.models import Plan


class SignedInRequest(HttpRequest):
    """What @login_required hands a view: `user` is a User, never AnonymousUser (for mypy)."""

    user: User


def _get_order(request: HttpRequest, public_id: UUID) -> Order:
    """The requesting customer's order, or 404 (also for other customers' and staff)."""
    return get_object_or_404(
        Order.objects.select_related("plan"), public_id=public_id, user=request.user
    )


def _get_instance(order: Order) -> Instance | None:
    try:
        return order.instance
    except Instance.DoesNotExist:
        return None


def _without_password(url: str) -> str:
    """A URL as shown on the page: any password in its user info is dropped."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


STEPS = [
    ("paid", "Payment confirmed"),
    ("vm_starting", "VM starting"),
    ("rabbitmq_starting", "RabbitMQ starting"),
    ("ready", "Ready"),
]


def _steps(order: Order, instance: Instance | None) -> list[dict[str, str]]:
    """The provisioning steps with done/current/todo, for orders on their way to a server."""
    if order.status not in Order.ON_ITS_WAY:
        return []
    note = ""
    if not order.is_paid:
        current, note = 0, "waiting for the payment"
    elif instance is not None and instance.is_ready:
        current = len(STEPS)
    elif instance is not None and instance.stage in (
        Instance.Stage.GUEST_UP,
        Instance.Stage.RABBITMQ_STARTING,
    ):
        current = 2
    else:
        current = 1
        if instance is None or instance.status == Instance.Status.REQUESTED:
            note = "waiting for a host with room"
    steps = []
    for i, (key, label) in enumerate(STEPS):
        state = "done" if i < current else "current" if i == current else "todo"
        steps.append(
            {"key": key, "label": label, "state": state, "note": note if i == current else ""}
        )
    return steps


def _when(moment: datetime) -> str:
    """14:03 UTC today, else 29 Nov, 14:03 UTC."""
    local = timezone.localtime(moment)
    if local.date() == timezone.localtime().date():
        return f"{local:%H:%M} UTC"
    return f"{local.day} {local:%b}, {local:%H:%M} UTC"


def _restart_notice(instance: Instance | None) -> str:
    """What the customer is told about a server that stopped on its own (issue 11)."""
    if instance is None or instance.last_crash_at is None:
        return ""
    crashed = _when(instance.last_crash_at)
    if instance.status == Instance.Status.LOST:
        return ""  # the page says the server is down instead
    if instance.is_restarting:
        return (
            f"Your server stopped unexpectedly at {crashed} and is being restarted. "
            "Your data and connection details stay the same; this page updates itself."
        )
    if instance.last_restart_at is not None and instance.is_ready:
        return (
            f"Your server stopped unexpectedly at {crashed} and was restarted at "
            f"{_when(instance.last_restart_at)}."
        )
    return ""


def _host_notice(instance: Instance | None) -> str:
    """What the customer is told while their server's host does not answer (docs/fleet.md)."""
    since = evacuation.host_down_since(instance)
    if since is None:
        return ""
    return (
        f"The host your server runs on has not answered since {_when(since)}: your server is "
        "unreachable. We are on it; if the host does not come back, we re-create your server "
        "on another host (same user name and password, a new address)."
    )


def _state_context(order: Order) -> dict[str, Any]:
    instance = _get_instance(order)
    host_notice = _host_notice(instance)
    restarting = bool(instance and instance.is_restarting)
    # A failed order keeps polling: staff may retry it, and the customer should see that happen.
    # So does a server being restarted by its host.
    serving = instance if instance and instance.is_ready and order.status in Order.SERVING else None
    restarted = (
        f":{instance.restart_count}:{restarting}" if instance and instance.last_crash_at else ""
    )
    console_ctx = page.page_context(order, instance, serving=serving is not None)
    # ... and so does one whose console command waits for its host's answer.
    final = (
        order.status not in Order.MAY_CHANGE and not restarting and not console_ctx["console_busy"]
    )
    return {
        "order": order,
        "instance": instance,
        "steps": _steps(order, instance),
        "final": final,
        "restart_notice": _restart_notice(instance),
        "host_notice": host_notice,
        # A server that ran and is lost is down, not a failed setup.
        "server_down": bool(
            instance and instance.status == Instance.Status.LOST and instance.ran_once
        ),
        # Changes whenever anything the page shows changes; the page's script compares it.
        "version": f"{order.status}:{instance.status if instance else ''}:{instance.stage if instance else ''}{restarted}{console_ctx['console_version']}{':host-down' if host_notice else ''}",
        "show_connection": serving is not None,
        "management_url": _without_password(serving.management_url) if serving else "",
        "amqp_url": _without_password(serving.amqp_url) if serving else "",
        "ca_download": bool(serving and settings.CA_CERT and serving.amqp_url.startswith("amqps:")),
        "offline_payments": offline_payments_enabled(),
        **console_ctx,
    }


@login_required
def order_list(request: SignedInRequest) -> HttpResponse:
    orders = Order.objects.filter(user=request.user).select_related("plan")
    return render(request, "orders/list.html", {"orders": orders})


@login_required
@require_http_methods(["GET", "POST"])
def checkout(request: SignedInRequest, plan_slug: str) -> HttpResponse:
    plan = get_object_or_404(Plan, slug=plan_slug, is_active=True)
    if request.method != "POST":
        # Back from the login page after a POST as an anonymous visitor: buying needs a click.
        return redirect(reverse("store:pricing") + f"#plan-{plan.slug}")
    if not rooms.plan_available(plan):  # sold out since the page was shown
        messages.error(request, f"{plan.name} is sold out right now: join its waitlist below.")
        return redirect(reverse("store:pricing") + f"#plan-{plan.slug}")

    try:
        _order, redirect_url = start_checkout(user=request.user, plan=plan)
    except CheckoutError as exc:
        messages.error(request, str(exc))
        return redirect("store:pricing")
    return redirect(redirect_url)


@login_required
@require_http_methods(["GET", "POST"])
def offline_checkout(request: HttpRequest, public_id: UUID) -> HttpResponse:
    if not offline_payments_enabled():
        raise Http404("Offline payments are disabled")
    order = _get_order(request, public_id)
    if order.status != Order.Status.PENDING_PAYMENT:
        return redirect("orders:detail", order.public_id)

    if request.method == "POST":
        try:
            complete_offline_payment(order=order)
        except OfflinePaymentError:
            messages.error(request, "The payment did not go through. Please try again.")
            return redirect("orders:offline_checkout", order.public_id)
        return redirect("orders:success", order.public_id)
    return render(request, "orders/offline_checkout.html", {"order": order})


@login_required
def success(request: HttpRequest, public_id: UUID) -> HttpResponse:
    # Not proof of payment: only the signed webhook marks the order paid.
    order = _get_order(request, public_id)
    return render(request, "orders/success.html", {"order": order})


@login_required
def cancelled(request: HttpRequest, public_id: UUID) -> HttpResponse:
    order = _get_order(request, public_id)
    return render(request, "orders/cancelled.html", {"order": order})


@never_cache
@login_required
def detail(request: HttpRequest, public_id: UUID) -> HttpResponse:
    order = _get_order(request, public_id)
    ctx = _state_context(order)
    ctx |= _metrics_context(order, ctx["instance"], request.GET.get("range"))
    return render(request, "orders/detail.html", ctx)


def _metrics_context(order: Order, instance: Instance | None, range_param: str | None) -> dict:
    """The metrics and alarms sections (orders/_metrics.html, orders/_alarms.html)."""
    if instance is None or not metrics_page.shows_metrics(order, instance):
        return {"show_metrics": False}
    range_key = metrics_page.range_from(range_param)
    return {
        "show_metrics": True,
        "metrics_refresh_ms": settings.METRICS_REFRESH_SECONDS * 1000,
        **metrics_page.metrics_context(instance, range_key),
        **alarms_context(instance),
    }


def _serving_instance(request: HttpRequest, public_id: UUID) -> tuple[Order, Instance]:
    """The owner's order and its instance, when the page shows metrics for it; else 404."""
    order = _get_order(request, public_id)
    instance = _get_instance(order)
    if instance is None or not metrics_page.shows_metrics(order, instance):
        raise Http404("No server to measure")
    return order, instance


@never_cache
@login_required
@require_GET
def metrics(request: HttpRequest, public_id: UUID) -> JsonResponse:
    """The metrics fragment the order page refetches: {"metrics": html, "alarms": html}."""
    order, instance = _serving_instance(request, public_id)
    ctx = _metrics_context(order, instance, request.GET.get("range")) | {"order": order}
    return JsonResponse(
        {
            "range": ctx["metrics_range"],
            "metrics": render_to_string("orders/_metrics_live.html", ctx, request=request),
            "alarms": render_to_string("orders/_alarm_list.html", ctx, request=request),
        }
    )


@login_required
@require_POST
def alarm_add(request: HttpRequest, public_id: UUID) -> HttpResponse:
    order, instance = _serving_instance(request, public_id)
    try:
        threshold = float(request.POST.get("threshold", ""))
        minutes = int(request.POST.get("minutes", ""))
    except ValueError:
        messages.error(request, "The threshold and the minutes must be numbers.")
    else:
        try:
            add_alarm(
                instance=instance,
                kind=request.POST.get("kind", ""),
                threshold=threshold,
                minutes=minutes,
            )
        except AlarmError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Alarm added.")
    return redirect(reverse("orders:detail", args=[order.public_id]) + "#alarms")


@login_required
@require_POST
def alarm_remove(request: HttpRequest, public_id: UUID, alarm_id: int) -> HttpResponse:
    order, instance = _serving_instance(request, public_id)
    if remove_alarm(instance=instance, alarm_id=alarm_id):
        messages.success(request, "Alarm removed.")
    return redirect(reverse("orders:detail", args=[order.public_id]) + "#alarms")


@never_cache
@login_required
@require_GET
def status(request: HttpRequest, public_id: UUID) -> JsonResponse:
    """The order's state; with `since=<version>` a long poll: answers when the version differs
    or after ORDER_LONG_POLL_SECONDS (orders/web/order_wait.py)."""
    order = _get_order(request, public_id)
    since = request.GET.get("since", "")[:500]
    if since:
        order_wait.wait_for_change(
            str(order.pk),
            since,
            lambda: _state_context(Order.objects.get(pk=order.pk))["version"],
            timeout=settings.ORDER_LONG_POLL_SECONDS,
        )
        order = Order.objects.get(pk=order.pk)
    ctx = _state_context(order)
    instance = ctx["instance"]
    return JsonResponse(
        {
            "order": str(order.public_id),
            "status": order.status,
            "status_label": "Server down" if ctx["server_down"] else order.get_status_display(),
            "instance_status": instance.status if instance else None,
            "stage": instance.stage if instance else None,
            "final": ctx["final"],
            "version": ctx["version"],
            "html": render_to_string("orders/_state.html", ctx, request=request),
        }
    )


@never_cache
@login_required
@require_POST
def credentials(request: HttpRequest, public_id: UUID) -> HttpResponse:
    """The owner's explicit request for the password: POST only, so it never sits in a URL."""
    order = _get_order(request, public_id)
    instance = _get_instance(order)
    if instance is None or not instance.is_ready:
        raise Http404("No credentials yet")

    password = instance.admin_password
    console.mark_password_shown(instance=instance)  # a rotation's one-time notice is over
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"username": instance.admin_username, "password": password})
    return render(request, "orders/credentials.html", {"order": order, "instance": instance})


@login_required
@require_POST
def cancel(request: HttpRequest, public_id: UUID) -> HttpResponse:
    order = _get_order(request, public_id)
    if order.can_cancel:
        try:
            cancel_order(order=order, reason="Cancelled by the customer")
        except CheckoutError as exc:  # Stripe refused to end the subscription: nothing changed
            messages.error(request, str(exc))
        else:
            messages.success(request, "Your order is cancelled.")
    return redirect("orders:detail", order.public_id)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    signature = request.headers.get("Stripe-Signature", "")
    try:
        process_webhook(payload=request.body, signature=signature)
    except WebhookError:
        return HttpResponse(status=400)
    return HttpResponse(status=200)


CONSOLE_SERVICES = {
    "restart": console.request_restart,
    "password": console.request_password_rotation,
}
CONSOLE_DONE = {
    "restart": "Restart requested: your server restarts in a moment.",
    "password": "Password change requested: the new password appears here once it is set.",
    "plan": "Plan change requested: your server restarts with its new size in a moment.",
}


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def console_action(request: HttpRequest, public_id: UUID, action: str) -> HttpResponse:
    """GET: the confirmation page (works without JavaScript); POST: do it, once per form."""
    order = _get_order(request, public_id)
    instance = _get_instance(order)
    if action not in CONSOLE_DONE or instance is None:
        raise Http404("No such action")
    if request.method != "POST":
        ctx = page.confirm_context(order, instance, action)
        return render(request, "orders/console_confirm.html", ctx)
    try:
        request_id = UUID(request.POST.get("request_id", ""))
    except ValueError:
        messages.error(request, "That form had expired; nothing was changed. Please try again.")
        return redirect("orders:detail", order.public_id)
    try:
        if action == "plan":
            plan = console.chosen_plan(request.POST.get("plan", ""))
            started = console.request_plan_change(order=order, request_id=request_id, plan=plan)
        else:
            started = CONSOLE_SERVICES[action](order=order, request_id=request_id)
    except console.ConsoleError as exc:
        messages.error(request, str(exc))
    else:
        if started.new:
            messages.success(request, CONSOLE_DONE[action])
    return redirect("orders:detail", order.public_id)


@login_required
@require_POST
def billing_portal(request: HttpRequest, public_id: UUID) -> HttpResponse:
    """Stripe's customer portal (cards, invoices) for the order's customer; not offline."""
    order = _get_order(request, public_id)
    if not console.stripe_on() or not order.stripe_customer_id:
        raise Http404("No billing portal")
    back = request.build_absolute_uri(reverse("orders:detail", args=[order.public_id]))
    try:
        url = billing_portal_url(order=order, return_url=back)
    except CheckoutError as exc:
        messages.error(request, str(exc))
        return redirect("orders:detail", order.public_id)
    return redirect(url)


@require_GET
def ca_certificate(request: HttpRequest) -> HttpResponse:
    """Warren's root CA certificate (public: no sign-in needed, so `curl` can fetch it); 404 when
    the shop has none configured (WARREN_CA_CERT) or the file is not a certificate."""
    pem = ca_certificate_pem()
    if pem is None:
        raise Http404("No CA certificate")
    response = HttpResponse(pem, content_type="application/x-pem-file")
    response["Content-Disposition"] = 'attachment; filename="warren-ca.pem"'
    response["Cache-Control"] = "public, max-age=3600"
    return response
