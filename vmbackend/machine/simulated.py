"""The simulated machine driver (WARREN_DRIVER=simulated): a VM without QEMU, for load tests.

A `SimulatedMachine` is a `Machine` (vmbackend/machine/base.py) like the QEMU one: in a boot
(vmbackend/host/boot.py) the
daemon, its registry, state files, events, capacity checks and AMQP side are the real ones; only
the machine is a record. Its launch waits a boot time drawn from WARREN_SIM_BOOT_SECONDS
(`low-high`, uniform, or one number) split over the real stages (vm_starting, guest_up,
rabbitmq_starting), and fails with probability WARREN_SIM_FAILURE_RATE (then the real failure
path runs: instance.failed, the VM cleaned up, its room freed). Ready VMs get loopback URLs on
their allocated ports that nothing answers: nobody is meant to connect. Nothing survives a daemon
restart (there is no process to adopt): recovery treats it as a QEMU gone while away.

Shipped in the product so `bench/fleet.py` can run many hosts on one machine; never the default.
"""

from __future__ import annotations

import dataclasses
import random
import re
import threading
from collections.abc import Callable
from typing import Any

from vmbackend.machine.base import MachineError
from vmbackend.machine.qemu import VMSpec

BOOT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?))?\s*$")


def parse_boot_seconds(raw: str) -> tuple[float, float]:
    """`2` -> (2, 2); `0.5-3` -> (0.5, 3). ValueError for anything else or low > high."""
    match = BOOT_RE.match(raw)
    if not match:
        raise ValueError(f"boot seconds must look like 2 or 0.5-3, got {raw!r}")
    low = float(match[1])
    high = float(match[2]) if match[2] is not None else low
    if low > high or high > 3600:
        raise ValueError(f"boot seconds must be low <= high <= 3600, got {raw!r}")
    return low, high


class SimulatedMachine:
    """What a Boot and the commands ask of a Machine, without a process."""

    pid: int | None = None

    def __init__(
        self,
        spec: VMSpec,
        boot_seconds: tuple[float, float],
        failure_rate: float,
        seed: Any = None,
    ):
        self.spec = spec
        rng = random.Random(seed)  # noqa: S311 - a simulation, not a secret
        self.total = rng.uniform(*boot_seconds)
        self.fails = rng.random() < failure_rate
        self.running = False
        self.stopped = threading.Event()  # kill/destroy ends a wait at once

    def _wait(self, fraction: float) -> None:
        if self.stopped.wait(self.total * fraction):
            raise MachineError("simulated machine was killed")

    def launch(self, *, allow_restore: bool = True) -> str:
        self._wait(0.2)
        self.running = True
        return "restore" if allow_restore else "cold"

    def start(self) -> str:
        self.stopped.clear()
        self._wait(0.2)
        self.running = True
        return "cold"

    def wait_guest_agent(self, deadline: float) -> None:
        self._wait(0.3)

    def guest_addresses(self, wait: float = 15.0) -> list[str]:
        return ["10.0.2.15"]

    def personalize(self, deadline: float, before_cookie: Callable[[], None] | None = None) -> None:
        return None  # a simulated VM has no guest to personalize (nor TLS to install)

    def speaks_tls(self) -> bool:
        return False

    def guest_exec(
        self,
        path: str,
        args: list[str] | None = None,
        *,
        input_data: bytes | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        raise MachineError("a simulated machine has no guest to run commands in")

    def write_guest_file(self, path: str, data: bytes) -> None:
        raise MachineError("a simulated machine has no guest to write files in")

    def open_tls_ports(self, cert_der: bytes) -> None:
        raise MachineError("a simulated machine has no TLS ports")

    def management_url(self) -> str:
        raise MachineError("a simulated machine has no management API")

    # The console's commands: no guest to change, no disk to grow.
    def set_admin_password(self, password: str) -> None:
        self.spec = dataclasses.replace(self.spec, admin_password=password)

    def hand_over(self, admin_user: str, admin_password: str, limits: dict[str, int]) -> None:
        self.spec = dataclasses.replace(
            self.spec, admin_user=admin_user, admin_password=admin_password, limits=dict(limits)
        )

    def has_disk(self) -> bool:
        return False

    def grow_running_disk(self, disk_gb: int) -> None:
        raise MachineError("a simulated machine has no disk to grow")

    def grow_root(self, timeout: float = 120.0) -> None:
        raise MachineError("a simulated machine has no disk to grow")

    def wait_management(self, base_url: str, deadline: float) -> None:
        self._wait(0.5)
        if self.fails:
            self.running = False
            raise MachineError("simulated boot failure (WARREN_SIM_FAILURE_RATE)")

    def apply_limits(self, base_url: str) -> None:
        return None

    def runtime(self, base_url: str, timeout: float = 5.0) -> dict[str, str]:
        return {}

    def is_running(self) -> bool:
        return self.running

    def powerdown(self, timeout: float = 30) -> None:
        self.kill()

    def kill(self) -> None:
        self.running = False
        self.stopped.set()

    def destroy(self) -> None:
        self.kill()
