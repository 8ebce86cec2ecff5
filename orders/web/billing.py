"""Paying and the money pages: Checkout, the offline payment page, Stripe's webhook endpoint and
its customer portal. Thin: parse, call a billing service, render.
"""

from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from orders.billing.checkout import CheckoutError, billing_portal_url, start_checkout
from orders.billing.offline_checkout import (
    OfflinePaymentError,
    complete_offline_payment,
    offline_payments_enabled,
)
from orders.billing.webhooks import WebhookError, process_webhook
from orders.console import commands as console
from orders.fleet import rooms
from orders.models import Order
from orders.web.access import SignedInRequest, get_order
from store.models import Plan


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
    order = get_order(request, public_id)
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
    order = get_order(request, public_id)
    return render(request, "orders/success.html", {"order": order})


@login_required
def cancelled(request: HttpRequest, public_id: UUID) -> HttpResponse:
    order = get_order(request, public_id)
    return render(request, "orders/cancelled.html", {"order": order})


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    signature = request.headers.get("Stripe-Signature", "")
    try:
        process_webhook(payload=request.body, signature=signature)
    except WebhookError:
        return HttpResponse(status=400)
    return HttpResponse(status=200)


@login_required
@require_POST
def billing_portal(request: HttpRequest, public_id: UUID) -> HttpResponse:
    """Stripe's customer portal (cards, invoices) for the order's customer; not offline."""
    order = get_order(request, public_id)
    if not console.stripe_on() or not order.stripe_customer_id:
        raise Http404("No billing portal")
    back = request.build_absolute_uri(reverse("orders:detail", args=[order.public_id]))
    try:
        url = billing_portal_url(order=order, return_url=back)
    except CheckoutError as exc:
        messages.error(request, str(exc))
        return redirect("orders:detail", order.public_id)
    return redirect(url)
