"""The waitlist for sold-out plans (docs/fleet.md, "Selling only what can be delivered").

`join` records a signed-in customer's own address for a sold-out plan: never a typed-in address
(the shop would mail anyone), never a plan on sale, one entry per address and plan (a repeat
changes nothing), at most settings.WAITLIST_JOINS_PER_HOUR joins per customer (counted under the
customer's row lock). `notify_waitlist` emails every waiting address of each plan that a live host
can fit again, once (a conditional UPDATE marks an
entry notified before its email goes out, after the commit). The event worker calls it every
WAITLIST_INTERVAL seconds (orders/messaging/host_events.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.urls import reverse
from django.utils import timezone

from orders.core.emails import send_email
from orders.fleet import rooms
from store.models import Plan, WaitlistEntry

log = logging.getLogger(__name__)

_WINDOW = timedelta(hours=1)  # WAITLIST_JOINS_PER_HOUR


class WaitlistError(Exception):
    """Not joined; the message says why, for the customer."""


def join(*, plan: Plan, user: User, now: datetime | None = None) -> WaitlistEntry:
    """Put `user`'s address on sold-out `plan`'s waitlist. Joining again while waiting returns
    the entry as it is (no second email is possible: one entry per address and plan)."""
    now = now or timezone.now()
    email = (user.email or "").strip().lower()
    if not email:
        raise WaitlistError("Your account has no email address to write to.")
    if rooms.plan_available(plan, now):
        raise WaitlistError(f"{plan.name} is on sale right now: you can buy it.")
    with transaction.atomic():
        # Race: two joins of one customer at once would both pass the count below; the row
        # lock on the customer makes them take turns.
        User.objects.select_for_update().filter(pk=user.pk).first()
        entry = WaitlistEntry.objects.filter(plan=plan, email=email).first()
        if entry is not None and entry.notified_at is None:
            return entry
        recent = WaitlistEntry.objects.filter(user=user, created_at__gt=now - _WINDOW).count()
        if recent >= settings.WAITLIST_JOINS_PER_HOUR:
            log.warning("event=waitlist_rate_limited plan=%s user_id=%s", plan.slug, user.pk)
            raise WaitlistError("You joined waitlists too often; please try again in an hour.")
        if entry is not None:  # emailed before, sold out again: the same entry waits again
            WaitlistEntry.objects.filter(pk=entry.pk).update(
                notified_at=None, created_at=now, user=user
            )
            entry.refresh_from_db()
        else:
            try:
                with transaction.atomic():
                    entry = WaitlistEntry.objects.create(plan=plan, email=email, user=user)
            except IntegrityError:  # another account with this address joined just now
                return WaitlistEntry.objects.get(plan=plan, email=email)
    log.info("event=waitlist_joined plan=%s entry_id=%s user_id=%s", plan.slug, entry.pk, user.pk)
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
