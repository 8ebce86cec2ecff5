"""The order page's long poll: a status request waits until its order changes (issue 13).

`wait_for_change` returns as soon as what the page shows (`read()`, the state's version)
differs from the version the page has, or after `timeout`. It is woken by the per-process hub
(orders/lib/wakeup.py: PostgreSQL NOTIFY or SQLite's datagram on commit) for the order's key, and
re-reads every `RECHECK_SECONDS` anyway, so a missed wake-up costs at most that.

Why a long poll on threads and not server-sent events: the shop is a WSGI app under gunicorn;
an SSE stream would hold a thread for the page's whole life, a long poll only until the next
change or `timeout`, and it needs no new server. `warren run` serves with gthread workers, so a
waiting page holds a thread, not a worker process; at most `ORDER_LONG_POLL_MAX_WAITERS` wait
per process, and the next one answers at once (its page falls back to polling every 2 s):
waiting pages never starve the shop's other requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from django.conf import settings

from orders.lib import wakeup

RECHECK_SECONDS = 2.0

_slots_lock = threading.Lock()
_waiting = 0


def _take_slot() -> bool:
    global _waiting
    with _slots_lock:
        if _waiting >= settings.ORDER_LONG_POLL_MAX_WAITERS:
            return False
        _waiting += 1
        return True


def _free_slot() -> None:
    global _waiting
    with _slots_lock:
        _waiting -= 1


def waiting() -> int:
    """Status requests waiting in this process now."""
    with _slots_lock:
        return _waiting


def wait_for_change(
    key: str, since: str, read: Callable[[], str], *, timeout: float, hub: wakeup.Hub | None = None
) -> bool:
    """Wait until `read()` differs from `since`; True when it did, False at the timeout or when
    no waiting slot is free (then at once)."""
    hub = hub or wakeup.hub
    if timeout <= 0 or not _take_slot():
        return read() != since
    try:
        deadline = time.monotonic() + timeout
        seen = hub.generation(key)  # before reading: a change after this moves it
        while True:
            if read() != since:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            seen = hub.wait(key, seen, min(left, RECHECK_SECONDS))
    finally:
        _free_slot()
