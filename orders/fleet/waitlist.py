"""The waitlist for sold-out plans (docs/fleet.md, "Selling only what can be delivered").

`join` records an address for a plan (a repeat changes nothing); `notify_waitlist` emails every
waiting address of each plan that a live host can fit again, once (a conditional UPDATE marks an
entry notified before its email goes out, after the commit). The event worker calls it every
WAITLIST_INTERVAL seconds (orders/messaging/host_events.py).
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.urls import reverse
from django.utils import timezone

from orders.core.emails import send_email
from orders.fleet import rooms
from store.models import Plan, WaitlistEntry

log = logging.getLogger(__name__)


def join(*, plan: Plan, email: str) -> WaitlistEntry:
    """Put `email` on `plan`'s waitlist (the address is already valid: the form checked it).
    Joining twice while waiting returns the first entry."""
    email = email.strip().lower()
    try:
        with transaction.atomic():
            entry = WaitlistEntry.objects.create(plan=plan, email=email)
    except IntegrityError:  # the partial unique index: already waiting
        return WaitlistEntry.objects.get(plan=plan, email=email, notified_at__isnull=True)
    log.info("event=waitlist_joined plan=%s entry_id=%s", plan.slug, entry.pk)
    return entry


def notify_waitlist(now: datetime | None = None) -> int:
    """Email the waiting addresses of every plan that is on sale again; how many were sent."""
    now = now or timezone.now()
    # Exists, not `waitlist__notified_at__isnull=True`: through the outer join that also matched
    # every plan with no entry at all, and each was looked at (and logged) every interval.
    waiting = WaitlistEntry.objects.filter(plan=OuterRef("pk"), notified_at__isnull=True)
    waiting_plans = list(Plan.objects.filter(Exists(waiting), is_active=True))
    if not waiting_plans:
        return 0
    available = rooms.available_plans(waiting_plans, now)
    sent = 0
    pricing_url = str(settings.SITE_URL).rstrip("/") + reverse("store:pricing")
    for plan in waiting_plans:
        if not available.get(plan.pk):
            continue
        notified = 0
        for entry in list(plan.waitlist.filter(notified_at__isnull=True)):
            # Compare-and-set: two workers never email one entry twice.
            if not WaitlistEntry.objects.filter(pk=entry.pk, notified_at__isnull=True).update(
                notified_at=now
            ):
                continue
            context = {"plan": plan, "pricing_url": f"{pricing_url}#plan-{plan.slug}"}
            notified += 1
            if send_email(to=entry.email, kind="plan_available", context=context):
                sent += 1
        log.info("event=waitlist_notified plan=%s entries=%s", plan.slug, notified)
    return sent
