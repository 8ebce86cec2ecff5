"""The one place a host's machine driver is chosen (WARREN_DRIVER: `qemu`, or `simulated`)."""

from __future__ import annotations

from pathlib import Path

from vmbackend.machine.base import Driver, Machine, MachineGone
from vmbackend.machine.qemu import VMSpec
from vmbackend.machine.qemu_machine import QemuMachine
from vmbackend.machine.simulated import SimulatedMachine

DRIVERS = ("qemu", "simulated")


class QemuDriver:
    """The product: each VM a QEMU process that runs in its own session, so it outlives us."""

    name = "qemu"
    needs_image = True
    outlives_daemon = True
    needs_tap = True

    def __init__(self, accel: str = "auto") -> None:
        self.accel = accel

    def new(self, spec: VMSpec, vm_dir: Path, image_dir: Path) -> Machine:
        return QemuMachine(spec, vm_dir, image_dir, accel=self.accel)

    def adopt(self, spec: VMSpec, vm_dir: Path, image_dir: Path) -> Machine:
        return QemuMachine.adopt(spec, vm_dir, image_dir)


class SimulatedDriver:
    """Load tests (vmbackend/machine/simulated.py): no image, no tap, nothing survives us."""

    name = "simulated"
    needs_image = False
    outlives_daemon = False
    needs_tap = False

    def __init__(self, boot_seconds: tuple[float, float], failure_rate: float) -> None:
        self.boot_seconds = boot_seconds
        self.failure_rate = failure_rate

    def new(self, spec: VMSpec, vm_dir: Path, image_dir: Path) -> Machine:
        return SimulatedMachine(spec, self.boot_seconds, self.failure_rate)

    def adopt(self, spec: VMSpec, vm_dir: Path, image_dir: Path) -> Machine:
        raise MachineGone(f"vm {spec.vm_id}: no process outlives a simulated VM's daemon")


def driver_for(
    name: str,
    *,
    accel: str = "auto",
    sim_boot_seconds: tuple[float, float] = (1.0, 3.0),
    sim_failure_rate: float = 0.0,
) -> Driver:
    if name == "qemu":
        return QemuDriver(accel)
    if name == "simulated":
        return SimulatedDriver(sim_boot_seconds, sim_failure_rate)
    raise ValueError(f"driver must be one of {', '.join(DRIVERS)}, not {name!r}")
