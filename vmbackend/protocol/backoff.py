"""Reconnecting with a capped, doubling backoff: one loop for every long-running AMQP worker.

The shop's outbox relay and event consumer and the host daemon all keep one broker session open,
and when it breaks they wait (0.5 s, 1 s, 2 s, ... up to 30 s) and open a new one. The loop and
its counter live here, once. Plain Python: no Django, no pika.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

BACKOFF_START = 0.5
BACKOFF_CAP = 30.0


@dataclass
class Backoff:
    """The delay before the next attempt: doubles after each failure, capped; reset on success."""

    start: float = BACKOFF_START
    cap: float = BACKOFF_CAP

    def __post_init__(self) -> None:
        self.delay = self.start

    def next(self) -> float:
        """The delay to wait now; the one after it is twice as long (at most `cap`)."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.start


# session(connected) runs one broker session; it calls connected() once the session works (that
# resets the backoff) and returns True when the work is done (the loop then ends).
Session = Callable[[Callable[[], None]], bool | None]


def run_with_reconnect(
    session: Session,
    *,
    stop: threading.Event,
    errors: tuple[type[BaseException], ...],
    on_error: Callable[[BaseException, float], None],
    backoff: Backoff | None = None,
    reraise: bool = False,
) -> None:
    """Run `session` until it returns True or `stop` is set; retry after one of `errors`.

    After an error, `on_error(exc, delay)` is called (log it, close what is left), then the loop
    waits `delay` seconds, woken early by `stop`. With `reraise`, the error propagates instead
    (a one-shot run reports the outage to its caller). Any other exception propagates: it is a bug.
    """
    backoff = backoff or Backoff()
    while not stop.is_set():
        try:
            if session(backoff.reset):
                return
        except errors as exc:
            delay = backoff.next()
            on_error(exc, delay)
            if reraise:
                raise
            stop.wait(delay)
