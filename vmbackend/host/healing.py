"""Self-healing: when a ready VM's QEMU exits on its own, start it again from its own disk.

The decision and its counters are one small object, `RestartPolicy` (systemd's
`Restart=on-failure` with `StartLimitBurst` / `StartLimitIntervalSec`): at most `burst` restart
attempts within `interval` seconds; the attempt times live in the VM's record (`restarts`), so
a daemon restart does not reset them. Between failed attempts it waits `delay`, doubling. It also
gives up after `burst` failed attempts in a row, however long they took: an attempt fails at the
boot deadline (1500 s), longer than the window, so a VM whose boot hangs every time would
otherwise be started again forever and staff never told. When the policy gives up, the VM is
`lost` (disk kept) and staff are told.

The watcher (`Commands.watch`) notices an exit within `Config.watch_interval` seconds; the heal
itself runs as a boot in a worker thread (`Commands.heal`), never on the connection's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_DELAY = 300.0


@dataclass(frozen=True)
class Decision:
    restart: bool
    attempt: int  # the number of this attempt within the window (1 = first); 0 when giving up
    delay: float  # seconds to wait before this attempt
    recent: list[float]  # the attempt times still inside the window (what the record keeps)


@dataclass(frozen=True)
class RestartPolicy:
    burst: int = 3
    interval: float = 900.0
    delay: float = 5.0

    def decide(self, attempts: Sequence[float], now: float, failed_in_a_row: int = 0) -> Decision:
        """Whether to restart now, given the times of earlier attempts (any order, any age) and
        how many attempts since the VM was last ready failed."""
        recent = sorted(t for t in attempts if now - self.interval < t <= now)
        if len(recent) >= self.burst or failed_in_a_row >= self.burst:
            return Decision(False, 0, 0.0, recent)
        attempt = len(recent) + 1
        # The first restart right away (the customer is waiting); then back off.
        delay = 0.0 if attempt == 1 else min(self.delay * 2 ** (attempt - 2), MAX_DELAY)
        return Decision(True, attempt, delay, recent)

    def describe(self, failed_in_a_row: int = 0) -> str:
        """The words after "gave up after" / the reason a VM was not restarted."""
        if self.burst == 0:
            return "no restarts: self-healing is off"
        if failed_in_a_row >= self.burst:  # the window is not full (else it would say so)
            return f"{failed_in_a_row} failed restarts in a row"
        return f"{self.burst} restarts within {self.interval:.0f} s"
