"""What the host asks of one VM, whatever runs it: the `Machine` and `Driver` protocols, the errors.

The daemon (vmbackend/host/) holds `Machine`s and never names an implementation: the QEMU one
(qemu_machine.QemuMachine, the product) or the simulated one (simulated.SimulatedMachine, load
tests). Which one a host runs is chosen once, by `drivers.driver_for(config.driver)`, and what
differs between them for the daemon is asked of the `Driver` (`needs_image`, `outlives_daemon`,
`needs_tap`) instead of testing the driver's name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from vmbackend.machine.qemu import VMSpec


class MachineError(Exception):
    """Something about a VM failed; the message says what, with context."""


class MachineGone(MachineError):
    """The VM's QEMU process is not running."""


class Machine(Protocol):
    """One VM as a boot, the commands and the sampler drive it (docs/machine-api.md)."""

    pid: int | None
    spec: VMSpec  # what the VM was made with; the console's commands change its admin

    def launch(self, *, allow_restore: bool = True) -> str: ...
    def start(self) -> str: ...
    def is_running(self) -> bool: ...
    def wait_guest_agent(self, deadline: float) -> None: ...
    def guest_addresses(self, wait: float = 15.0) -> list[str]: ...
    def guest_exec(
        self,
        path: str,
        args: list[str] | None = None,
        *,
        input_data: bytes | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]: ...
    def management_url(self) -> str: ...
    def speaks_tls(self) -> bool: ...
    def wait_management(self, base_url: str, deadline: float) -> None: ...
    def runtime(self, base_url: str, timeout: float = 5.0) -> dict[str, str]: ...
    def set_admin_password(self, password: str) -> None: ...
    def hand_over(self, admin_user: str, admin_password: str, limits: dict[str, int]) -> None: ...
    def has_disk(self) -> bool: ...
    def grow_running_disk(self, disk_gb: int) -> None: ...
    def grow_root(self, timeout: float = 120.0) -> None: ...
    def apply_limits(self, base_url: str) -> None: ...
    def personalize(
        self, deadline: float, before_cookie: Callable[[], None] | None = None
    ) -> None: ...
    def powerdown(self, timeout: float = 30) -> None: ...
    def kill(self) -> None: ...
    def destroy(self) -> None: ...


class Driver(Protocol):
    """Makes a host's Machines; what the daemon needs to know about them besides."""

    name: str
    needs_image: bool  # a create-vm for an image not on this host is refused
    outlives_daemon: bool  # a VM keeps running across a daemon restart (recovery adopts it)
    needs_tap: bool  # bridge mode: the VM's tap is created on the host before it starts

    def new(self, spec: VMSpec, vm_dir: Path, image_dir: Path) -> Machine: ...

    def adopt(self, spec: VMSpec, vm_dir: Path, image_dir: Path) -> Machine:
        """The running VM after a daemon restart; MachineGone when it is not running."""
        ...
