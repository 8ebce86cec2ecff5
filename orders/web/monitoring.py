"""The metrics and alarms on the order page: the refetched fragment and the alarm forms."""

from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from orders.models import Instance, Order
from orders.monitoring import metrics_page
from orders.monitoring.alarms import AlarmError, add_alarm, alarms_context, remove_alarm
from orders.web.access import get_instance, get_order


def metrics_sections(order: Order, instance: Instance | None, range_param: str | None) -> dict:
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
    order = get_order(request, public_id)
    instance = get_instance(order)
    if instance is None or not metrics_page.shows_metrics(order, instance):
        raise Http404("No server to measure")
    return order, instance


@never_cache
@login_required
@require_GET
def metrics(request: HttpRequest, public_id: UUID) -> JsonResponse:
    """The metrics fragment the order page refetches: {"metrics": html, "alarms": html}."""
    order, instance = _serving_instance(request, public_id)
    ctx = metrics_sections(order, instance, request.GET.get("range")) | {"order": order}
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
