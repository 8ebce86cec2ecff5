"""Customer pages for orders: the list, the order page and its long-polled status, the password,
cancelling, and Warren's CA certificate. Thin: parse, call a service, render.

The views of the other areas are beside this module (billing, monitoring, console, catalogue);
who may see an order is orders/web/access.py.
"""

import logging
import re
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from orders.billing.cancellation import cancel_order
from orders.billing.checkout import CheckoutError
from orders.billing.offline_checkout import (
    offline_payments_enabled,
)
from orders.console import commands as console
from orders.console import page
from orders.core.provisioning import ca_certificate_pem
from orders.fleet import evacuation
from orders.models import Instance, Order
from orders.web import order_wait
from orders.web.access import SignedInRequest, get_instance, get_order
from orders.web.connect import tls_connection
from orders.web.monitoring import metrics_sections
from vmbackend.protocol import urls

log = logging.getLogger(__name__)

_PASSWORD_IN_URL = re.compile(r"^([a-z]+://[^:@/?#]*):[^@/?#]*@")  # scheme://user:password@


def _shown_url(instance: Instance, field: str, schemes: tuple[str, ...], *, user: bool) -> str:
    """A stored URL as the page shows it, any password cut out: only one that passes the
    contract's rule (a host could once store anything, and a port of 99999 made every page
    answer 500); else nothing, and staff hear of it in the log."""
    url = _PASSWORD_IN_URL.sub(r"\1@", str(getattr(instance, field)), count=1)
    if urls.is_valid(url, schemes, user=user):
        return url
    log.warning(
        "stored url hidden order_id=%s instance_id=%s field=%s",
        instance.order_id,
        instance.pk,
        field,
    )
    return ""


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
    instance = get_instance(order)
    host_notice = _host_notice(instance)
    restarting = bool(instance and instance.is_restarting)
    # A failed order keeps polling: staff may retry it, and the customer should see that happen.
    # So does a server being restarted by its host.
    serving = instance if instance and instance.is_ready and order.status in Order.SERVING else None
    restarted = (
        f":{instance.restart_count}:{restarting}" if instance and instance.last_crash_at else ""
    )
    console_ctx = page.page_context(order, instance, serving=serving is not None)
    tls_ctx = tls_connection(serving) if serving else {}
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
        "management_url": tls_ctx.get("named_management_url")
        or (
            _shown_url(serving, "management_url", urls.MANAGEMENT_SCHEMES, user=False)
            if serving
            else ""
        ),
        "amqp_url": _shown_url(serving, "amqp_url", urls.AMQP_SCHEMES, user=True)
        if serving
        else "",
        "ca_download": bool(serving and settings.CA_CERT and serving.amqp_url.startswith("amqps:")),
        "offline_payments": offline_payments_enabled(),
        **tls_ctx,
        **console_ctx,
    }


@login_required
def order_list(request: SignedInRequest) -> HttpResponse:
    orders = Order.objects.filter(user=request.user).select_related("plan")
    return render(request, "orders/list.html", {"orders": orders})


@never_cache
@login_required
def detail(request: HttpRequest, public_id: UUID) -> HttpResponse:
    order = get_order(request, public_id)
    ctx = _state_context(order)
    ctx |= metrics_sections(order, ctx["instance"], request.GET.get("range"))
    return render(request, "orders/detail.html", ctx)


@never_cache
@login_required
@require_GET
def status(request: HttpRequest, public_id: UUID) -> JsonResponse:
    """The order's state; with `since=<version>` a long poll: answers when the version differs
    or after ORDER_LONG_POLL_SECONDS (orders/web/order_wait.py)."""
    order = get_order(request, public_id)
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
    order = get_order(request, public_id)
    instance = get_instance(order)
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
    order = get_order(request, public_id)
    if order.can_cancel:
        try:
            cancel_order(order=order, reason="Cancelled by the customer")
        except CheckoutError as exc:  # Stripe refused to end the subscription: nothing changed
            messages.error(request, str(exc))
        else:
            messages.success(request, "Your order is cancelled.")
    return redirect("orders:detail", order.public_id)


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
