"""SIGTERM/SIGINT handling shared by the shop's long-running workers (relay, event consumer)."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None], log: logging.Logger, event: str) -> Iterator[None]:
    """Call `stop` on SIGTERM or SIGINT (logging `event=<event> signal=N`) while the block runs,
    so the worker finishes its current step and exits cleanly; previous handlers come back after."""

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("event=%s signal=%s", event, signum)
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
