"""A host's capacity by resources (docs/fleet.md): memory MiB, vCPUs and disk GB.

Pure functions and one small value type; no pika, no QEMU. The registry sums what its VMs hold
(`usage`), the daemon asks `refusal` before it takes a create-vm, and the heartbeat reports
`Resources.heartbeat_fields()` so the shop can place the next VM where it fits.

What a VM holds: its memory and vCPUs as asked, and its disk at its full virtual size (a qcow2
overlay grows up to it). Every VM that holds a slot holds its resources too: a stopped VM may
start again, so its room is kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

GIB = 1024**3
DISK_RESERVE_FRACTION = 0.1  # of the free space, kept for the host (logs, saved states, images)
DEFAULT_CPU_OVERCOMMIT = 4.0  # an idle RabbitMQ guest takes ~14 % of a core (DESIGN.md)


class Sized(Protocol):
    @property
    def memory_mb(self) -> int: ...
    @property
    def vcpus(self) -> int: ...
    @property
    def disk_gb(self) -> int: ...


@dataclass(frozen=True)
class Size:
    """What one VM asks for (or holds)."""

    memory_mb: int
    vcpus: int
    disk_gb: int


@dataclass(frozen=True)
class Resources:
    """A host's totals and what its VMs hold. `vcpus_total` already includes the overcommit."""

    memory_total_mb: int
    vcpus_total: int
    disk_total_gb: int
    memory_used_mb: int = 0
    vcpus_used: int = 0
    disk_used_gb: int = 0

    @property
    def memory_free_mb(self) -> int:
        return max(0, self.memory_total_mb - self.memory_used_mb)

    @property
    def vcpus_free(self) -> int:
        return max(0, self.vcpus_total - self.vcpus_used)

    @property
    def disk_free_gb(self) -> int:
        return max(0, self.disk_total_gb - self.disk_used_gb)

    def heartbeat_fields(self) -> dict[str, Any]:
        """The resource fields of host.heartbeat (docs/protocol.md)."""
        return {
            "memory_total_mb": self.memory_total_mb,
            "memory_used_mb": self.memory_used_mb,
            "memory_free_mb": self.memory_free_mb,
            "vcpus_total": self.vcpus_total,
            "vcpus_used": self.vcpus_used,
            "vcpus_free": self.vcpus_free,
            "disk_total_gb": self.disk_total_gb,
            "disk_used_gb": self.disk_used_gb,
            "disk_free_gb": self.disk_free_gb,
        }


def usage(totals: Resources, held: Iterable[Sized]) -> Resources:
    """`totals` with what `held` (the VMs holding a slot) use."""
    memory = vcpus = disk = 0
    for vm in held:
        memory += vm.memory_mb
        vcpus += vm.vcpus
        disk += vm.disk_gb
    return Resources(
        memory_total_mb=totals.memory_total_mb,
        vcpus_total=totals.vcpus_total,
        disk_total_gb=totals.disk_total_gb,
        memory_used_mb=memory,
        vcpus_used=vcpus,
        disk_used_gb=disk,
    )


def refusal(resources: Resources, want: Sized) -> str | None:
    """Why a VM of size `want` does not fit next to what is used (None: it fits)."""
    r, missing = resources, []
    if r.memory_used_mb + want.memory_mb > r.memory_total_mb:
        missing.append(f"{want.memory_mb} MiB of memory ({resources.memory_free_mb} free)")
    if r.vcpus_used + want.vcpus > r.vcpus_total:
        missing.append(f"{want.vcpus} vCPUs ({resources.vcpus_free} free)")
    if r.disk_used_gb + want.disk_gb > r.disk_total_gb:
        missing.append(f"{want.disk_gb} GB of disk ({resources.disk_free_gb} free)")
    if not missing:
        return None
    return "does not fit this host: " + ", ".join(missing)


def overcommitted_vcpus(cpus: int, ratio: float) -> int:
    """The vCPUs a host may sell: its cores times the overcommit ratio, rounded down."""
    return max(0, math.floor(cpus * ratio))


def default_cpus() -> int:
    return os.cpu_count() or 1


def default_disk_gb(folder: Path) -> int:
    """Free space of the filesystem holding `folder` (its nearest existing parent), minus
    DISK_RESERVE_FRACTION, in whole GiB; 0 when unreadable (then no VM fits by disk)."""
    path = folder
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        stat = os.statvfs(path)
    except OSError:
        return 0
    free = stat.f_bavail * stat.f_frsize
    return max(0, int(free * (1 - DISK_RESERVE_FRACTION)) // GIB)
