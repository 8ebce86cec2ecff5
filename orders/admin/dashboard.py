"""The staff dashboard on the admin's front page: the business at a glance, each number a link.

Servers running by plan, monthly recurring revenue, orders waiting for room or failed, hosts with
free capacity, alarms firing and dead letters of the last day. A fixed handful of aggregate
queries whatever the size of the tables (no query per row). Each number's link opens its
changelist filtered by the same condition, through the list filters the changelists offer, so
the list shows as many rows as the number says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django import template
from django.db.models import Count, Q, Sum
from django.urls import reverse
from django.utils import timezone

from orders.fleet.hosts import with_free_capacity
from orders.fleet.placement import waiting_for_room
from orders.models import Alarm, DeadLetter, Host, Instance, Order

DEAD_LETTER_WINDOW = timedelta(days=1)
# Paying now: their plan's price recurs every month (past-due ones are not paying).
PAYING = sorted(Order.IN_GOOD_STANDING)


@dataclass(frozen=True)
class Figure:
    key: str  # stable name for tests and CSS
    label: str
    value: str
    url: str


def _link(model: str, **params: str) -> str:
    url = reverse(f"admin:orders_{model}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def _money(cents: int, currency: str) -> str:
    return f"{cents / 100:,.2f} {currency.upper()}"


def running_by_plan() -> list[Figure]:
    rows = (
        Instance.objects.filter(status=Instance.Status.READY)
        .values("order__plan_id", "order__plan__name")
        .annotate(n=Count("id"))
        .order_by("order__plan__name")
    )
    ready = Instance.Status.READY.value
    return [
        Figure(
            f"running-{row['order__plan_id']}",
            row["order__plan__name"],
            str(row["n"]),
            _link(
                "instance", status__exact=ready, order__plan__id__exact=str(row["order__plan_id"])
            ),
        )
        for row in rows
    ]


def recurring_revenue() -> list[Figure]:
    """Per currency: the monthly price of every order paying now."""
    rows = (
        Order.objects.filter(status__in=PAYING)
        .values("plan__currency")
        .annotate(cents=Sum("plan__monthly_price_cents"), n=Count("id"))
        .order_by("plan__currency")
    )
    url = _link("order", status__in=",".join(PAYING))
    return [
        Figure(
            f"mrr-{row['plan__currency']}",
            f"from {row['n']} orders",
            _money(row["cents"] or 0, row["plan__currency"]),
            url,
        )
        for row in rows
    ] or [Figure("mrr-none", "from 0 orders", "0", url)]


def attention(now: datetime) -> list[Figure]:
    """The single counts, in two aggregate queries per table at most."""
    since = now - DEAD_LETTER_WINDOW
    failed = Order.Status.FAILED.value
    waiting = Instance.objects.aggregate(n=Count("id", filter=waiting_for_room()))["n"]
    return [
        Figure(
            "waiting",
            "orders waiting for room",
            str(waiting),
            _link("instance", waiting_for_room="yes"),
        ),
        Figure(
            "failed",
            "orders failed",
            str(Order.objects.filter(status=failed).count()),
            _link("order", status__exact=failed),
        ),
        Figure(
            "hosts-free",
            "hosts with free capacity",
            str(Host.objects.filter(with_free_capacity(now)).count()),
            _link("host", room="free"),
        ),
        Figure(
            "alarms",
            "alarms firing",
            str(Alarm.objects.filter(status=Alarm.State.FIRING).count()),
            _link("alarm", status__exact=Alarm.State.FIRING.value),
        ),
        Figure(
            "dead-letters",
            "dead letters in the last day",
            str(DeadLetter.objects.filter(Q(received_at__gte=since)).count()),
            _link("deadletter", received_at__gte=since.isoformat()),
        ),
    ]


def dashboard(now: datetime) -> dict[str, list[Figure]]:
    return {
        "running": running_by_plan(),
        "revenue": recurring_revenue(),
        "attention": attention(now),
    }


# The admin's front page (templates/admin/index.html) loads this library (settings.TEMPLATES
# "libraries": an app's templatetags/ would sit in the wrong layer) and shows the figures above
# the list of models.
register = template.Library()


@register.inclusion_tag("admin/staff_dashboard.html")
def staff_dashboard() -> dict[str, object]:
    return {"dashboard": dashboard(timezone.now())}
