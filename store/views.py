from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from store.models import Plan


def pricing(request: HttpRequest) -> HttpResponse:
    plans = Plan.objects.filter(is_active=True)
    return render(request, "store/pricing.html", {"plans": plans})
