"""Failed-login throttle: per username and per client address, counted in Django's cache.

After LOGIN_FAILURES_PER_USERNAME failed logins for one username (or LOGIN_FAILURES_PER_ADDRESS
from one address), logins for it are refused, even with the right password, for
LOGIN_LOCKOUT_SECONDS; the lockout then ends by itself (the cache entry expires). Failures count
while they come within LOGIN_LOCKOUT_SECONDS of each other. A successful login clears its
username's count (not its address's: one valid account must not reset a password spray).
"""

from __future__ import annotations

import hashlib
import math
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest


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
    # Hashed: usernames are user input of any length and character; cache keys are not.
    user = hashlib.sha256(username.strip().casefold().encode()).hexdigest()
    addr = hashlib.sha256(address.encode()).hexdigest()
    return [
        (f"login-failures:user:{user}", settings.LOGIN_FAILURES_PER_USERNAME),
        (f"login-failures:addr:{addr}", settings.LOGIN_FAILURES_PER_ADDRESS),
    ]


def seconds_locked(*, username: str, address: str, now: float | None = None) -> int:
    """0 if a login may be tried now, else the seconds until the lockout ends."""
    now = time.time() if now is None else now
    wait = 0.0
    for key, _limit in _counters(username, address):
        entry = cache.get(key) or {}
        wait = max(wait, entry.get("locked_until", 0) - now)
    return math.ceil(wait) if wait > 0 else 0


def record_failure(*, username: str, address: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    lockout = settings.LOGIN_LOCKOUT_SECONDS
    for key, limit in _counters(username, address):
        entry = cache.get(key) or {"count": 0, "locked_until": 0}
        entry["count"] += 1
        if entry["count"] >= limit:
            entry = {"count": 0, "locked_until": now + lockout}
        cache.set(key, entry, timeout=lockout)


def record_success(*, username: str, address: str) -> None:
    user_key, _limit = _counters(username, address)[0]
    cache.delete(user_key)


def wait_message(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
