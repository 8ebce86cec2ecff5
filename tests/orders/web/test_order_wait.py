"""The order page's long poll (orders/web/order_wait.py) without a browser: it answers on a change,
at its timeout, and at once when the process's waiting slots are taken."""

from __future__ import annotations

import threading

import pytest

from orders.web import order_wait
from tests.e2e.harness import wait_until


@pytest.fixture(autouse=True)
def no_other_waiters():
    """The waiting count is per process: a browser test's live server may still hold a page's
    long poll (up to its 20 s timeout) after that test ended. Start from none waiting."""
    wait_until(lambda: order_wait.waiting() == 0, 60, "no long poll waiting in this process")


class FakeHub:
    """A hub whose key moves when the test says so."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.gen = 0
        self.waits: list[float] = []

    def generation(self, key: str) -> int:
        return self.gen

    def wait(self, key: str, seen: int, timeout: float) -> int:
        self.waits.append(timeout)
        with self.cond:
            self.cond.wait_for(lambda: self.gen != seen, timeout)
            return self.gen

    def bump(self) -> None:
        with self.cond:
            self.gen += 1
            self.cond.notify_all()


def test_it_answers_when_the_version_changes_after_a_wake_up():
    hub, version = FakeHub(), ["v1"]
    result: list[bool] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            order_wait.wait_for_change("1", "v1", lambda: version[0], timeout=60, hub=hub)
        )
    )
    waiter.start()
    while not hub.waits:
        threading.Event().wait(0.01)
    version[0] = "v2"
    hub.bump()
    waiter.join(timeout=30)
    assert result == [True]
    assert order_wait.waiting() == 0


def test_a_wake_up_for_an_unchanged_version_keeps_waiting_until_the_timeout():
    hub = FakeHub()
    hub.bump()
    assert order_wait.wait_for_change("1", "v1", lambda: "v1", timeout=0.2, hub=hub) is False
    assert order_wait.waiting() == 0


def test_a_different_version_answers_at_once_without_waiting():
    hub = FakeHub()
    assert order_wait.wait_for_change("1", "old", lambda: "new", timeout=60, hub=hub) is True
    assert hub.waits == []


def test_no_free_slot_answers_at_once(settings):
    settings.ORDER_LONG_POLL_MAX_WAITERS = 0
    hub = FakeHub()
    assert order_wait.wait_for_change("1", "v1", lambda: "v1", timeout=60, hub=hub) is False
    assert hub.waits == []


def test_the_waiting_count_is_released_after_an_error(settings):
    settings.ORDER_LONG_POLL_MAX_WAITERS = 1

    def broken() -> str:
        raise RuntimeError("database gone")

    for _ in range(3):  # a leaked slot would make the 2nd call answer at once
        try:
            order_wait.wait_for_change("1", "v1", broken, timeout=60, hub=FakeHub())
        except RuntimeError:
            pass
    assert order_wait.waiting() == 0
