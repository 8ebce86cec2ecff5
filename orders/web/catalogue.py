from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from orders.fleet import rooms, waitlist
from store.models import Plan


def pricing(request: HttpRequest) -> HttpResponse:
    plans = list(Plan.objects.filter(is_active=True))
    available = rooms.available_plans(plans)
    for plan in plans:
        plan.sold_out = not available[plan.pk]  # type: ignore[attr-defined]
    return render(request, "store/pricing.html", {"plans": plans})


@login_required
@require_POST
def join_waitlist(request: HttpRequest, plan_slug: str) -> HttpResponse:
    """Signed in only: the address is the account's own (orders/fleet/waitlist.py)."""
    plan = get_object_or_404(Plan, slug=plan_slug, is_active=True)
    try:
        waitlist.join(plan=plan, user=request.user)  # type: ignore[arg-type]
    except waitlist.WaitlistError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"You are on the waitlist for {plan.name}: we will email you when it is available.",
        )
    return redirect(reverse("store:pricing") + f"#plan-{plan.slug}")
