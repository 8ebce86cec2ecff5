"""Failed-login throttle: per username and per client address, counted in Django's cache.

After LOGIN_FAILURES_PER_USERNAME failed logins for one username (or LOGIN_FAILURES_PER_ADDRESS
from one address), logins for it are refused, even with the right password, for
LOGIN_LOCKOUT_SECONDS; the lockout then ends by itself (the cache entry expires). Failures count
while they come within LOGIN_LOCKOUT_SECONDS of each other. A successful login clears its
username's count (not its address's: one valid account must not reset a password spray).

The counters are rows in the database (accounts.models.LoginFailures), counted under a row lock:
every web worker and machine shares them, and concurrent failures are each counted. They lived in
Django's cache, read then written: N failures at once counted as fewer, so a parallel password
guesser got more tries than the limit. Cache `add`/`incr` would not fix the deployed cache (the
database cache's `incr` is itself a get then a set, Django's BaseCache.incr), and the default cache
is per process (the limit once per gunicorn worker).
"""

from __future__ import annotations

import hashlib
import math
import time

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest

from accounts.models import LoginFailures


def client_address(request: HttpRequest) -> str:
    """The client's address: the TLS proxy's header if one is configured, else the TCP peer."""
    header = settings.CLIENT_IP_HEADER
    if header:
        # The proxy sets (overwrites) it; with X-Forwarded-For, the first entry is the client.
        forwarded = request.headers.get(header, "").split(",")[0].strip()
        if forwarded:
            return forwarded[:100]
    return str(request.META.get("REMOTE_ADDR", ""))


def _counters(username: str, address: str) -> list[tuple[str, int]]:
    # Hashed: usernames are user input of any length and character; keys are not.
    user = hashlib.sha256(username.strip().casefold().encode()).hexdigest()
    addr = hashlib.sha256(address.encode()).hexdigest()
    return [
        (f"user:{user}", settings.LOGIN_FAILURES_PER_USERNAME),
        (f"addr:{addr}", settings.LOGIN_FAILURES_PER_ADDRESS),
    ]


def seconds_locked(*, username: str, address: str, now: float | None = None) -> int:
    """0 if a login may be tried now, else the seconds until the lockout ends."""
    now = time.time() if now is None else now
    keys = [key for key, _limit in _counters(username, address)]
    until = LoginFailures.objects.filter(key__in=keys).values_list("locked_until", flat=True)
    wait = max((locked_until - now for locked_until in until), default=0.0)
    return math.ceil(wait) if wait > 0 else 0


def record_failure(*, username: str, address: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    lockout = settings.LOGIN_LOCKOUT_SECONDS
    for key, limit in _counters(username, address):
        _count(key, limit, now=now, lockout=lockout)
    # Counters quiet for a whole lockout are over (as the cache's expiry ended them): without
    # this, a spray of made-up usernames would grow the table without end.
    LoginFailures.objects.filter(last_failure_at__lt=now - lockout, locked_until__lt=now).delete()


def _count(key: str, limit: int, *, now: float, lockout: int) -> None:
    # Race: failed logins for one username or address arrive at once (a parallel guesser). Each
    # failure reads, adds one and writes under the row's lock (select_for_update; a new row's
    # INSERT race is settled by its primary key, get_or_create then waits for the winner's
    # lock), so none is lost and the lockout starts at exactly the limit.
    with transaction.atomic():
        row, _ = LoginFailures.objects.select_for_update().get_or_create(
            key=key, defaults={"last_failure_at": now}
        )
        if now - row.last_failure_at > lockout:
            row.count = 0  # the earlier failures are too old to count
        row.count += 1
        row.last_failure_at = now
        if row.count >= limit:
            row.count, row.locked_until = 0, now + lockout
        row.save()


def record_success(*, username: str, address: str) -> None:
    user_key, _limit = _counters(username, address)[0]
    LoginFailures.objects.filter(key=user_key).delete()


def wait_message(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
