from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from orders.fleet import rooms, waitlist
from store.models import Plan


class WaitlistForm(forms.Form):
    email = forms.EmailField(max_length=254)


def pricing(request: HttpRequest) -> HttpResponse:
    plans = list(Plan.objects.filter(is_active=True))
    available = rooms.available_plans(plans)
    for plan in plans:
        plan.sold_out = not available[plan.pk]  # type: ignore[attr-defined]
    email = request.user.email if request.user.is_authenticated else ""
    return render(request, "store/pricing.html", {"plans": plans, "email": email})


@require_POST
def join_waitlist(request: HttpRequest, plan_slug: str) -> HttpResponse:
    plan = get_object_or_404(Plan, slug=plan_slug, is_active=True)
    form = WaitlistForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Please give a valid email address to join the waitlist.")
    else:
        waitlist.join(plan=plan, email=form.cleaned_data["email"])
        messages.success(
            request,
            f"You are on the waitlist for {plan.name}: we will email you when it is available.",
        )
    return redirect(reverse("store:pricing") + f"#plan-{plan.slug}")
