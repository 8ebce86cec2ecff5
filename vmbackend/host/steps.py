"""Where a path's time goes: seconds per named step, logged as key=value on one line."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("vmbackend.host.boot")


class StepClock:
    """Seconds per named step of one path, for its log line (`management_s=0.012 ...`): where
    a boot's or a claim's time goes, read by bench/provisioning.py."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.steps.append((name, now - self.last))
        self.last = now

    def fields(self) -> str:
        return " ".join(f"{name}_s={seconds:.3f}" for name, seconds in self.steps)

    def log_done(self, what: str, host_id: str, vm_id: str, last: str, **fields: Any) -> None:
        """Mark the `last` step (up to now) and log the line."""
        self.mark(last)
        extra = " ".join(f"{key}={value}" for key, value in fields.items())
        log.info("%s host_id=%s vm_id=%s %s %s", what, host_id, vm_id, extra, self.fields())
