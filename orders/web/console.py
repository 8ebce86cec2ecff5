"""The console's confirmation pages and their forms (restart, password, plan): once per form."""

from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from orders.console import commands as console
from orders.console import page
from orders.web.access import get_instance, get_order

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
    order = get_order(request, public_id)
    instance = get_instance(order)
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
