"""Failed logins that arrive at once are each counted: the lockout starts at exactly the limit.

Real threads, each with its own database connection, released together by a barrier. The counts
used to be read from Django's cache, increased and written back: concurrent failures overwrote
each other, and N failures at once counted as fewer (with the deployment's database cache, this
test failed so: not locked after the limit's worth of failures).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connection

from accounts import throttle

pytestmark = pytest.mark.django_db(transaction=True)

# Django's SQLite test database is in memory with a shared cache: a second writer gets
# "database table is locked" at once instead of waiting. Run these on PostgreSQL (make test does).
needs_row_locks = pytest.mark.skipif(
    "connection.vendor == 'sqlite'",
    reason="in-memory shared-cache SQLite cannot run writers concurrently",
)

THREADS = 8


@pytest.fixture(autouse=True)
def _limits(settings) -> None:
    settings.LOGIN_FAILURES_PER_USERNAME = THREADS
    settings.LOGIN_FAILURES_PER_ADDRESS = THREADS
    settings.LOGIN_LOCKOUT_SECONDS = 900


def _at_once(calls: list[Callable[[], None]]) -> None:
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def worker(call: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout=30)
            call()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []


def _fail(username: str, address: str) -> Callable[[], None]:
    return lambda: throttle.record_failure(username=username, address=address)


@needs_row_locks
def test_the_limits_worth_of_failures_at_once_locks_the_username() -> None:
    _at_once([_fail("alice", f"10.0.0.{n}") for n in range(THREADS)])

    assert throttle.seconds_locked(username="alice", address="10.9.9.9") > 0


@needs_row_locks
def test_the_limits_worth_of_failures_at_once_locks_the_address() -> None:
    _at_once([_fail(f"user{n}", "10.0.0.1") for n in range(THREADS)])

    assert throttle.seconds_locked(username="nobody", address="10.0.0.1") > 0


@needs_row_locks
def test_one_failure_short_of_the_limit_at_once_does_not_lock_and_the_next_does() -> None:
    _at_once([_fail("alice", f"10.0.0.{n}") for n in range(THREADS - 1)])

    assert throttle.seconds_locked(username="alice", address="10.9.9.9") == 0
    throttle.record_failure(username="alice", address="10.0.0.99")
    assert throttle.seconds_locked(username="alice", address="10.9.9.9") > 0
