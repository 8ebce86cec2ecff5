"""The warm pool (issue 13): ready VMs waiting on the host for a create-vm that fits.

`WARREN_POOL=<image>:<memory_mb>:<count>[,...]` keeps `count` ready VMs of that image and memory
(1 vCPU, the default disk size) on this host. Each is a whole VM of its own, booted through the
ordinary path (the image's saved state, then personalizing; else a cold boot): its own
hostname, Erlang cookie and a random admin user and password, guest refused. Nobody outside the
daemon ever sees one: a pool VM publishes no event, is not in list-vms, and no host command
reaches its id.

A create-vm that fits a ready pool VM (same image, memory and vCPUs, a disk no larger than the
one asked for) claims it (`Registry.claim_pool`): under the registry lock, the new VM's record
(the order's vm-id, naming the pool VM's QEMU and folder in `machine_id`, the pool admin in
`claimed_from`) is written durably first, then the pool VM's record file is removed. A SIGKILL
between the two leaves both files: recovery sees the pool VM referenced by a claiming record and
drops the pool record (never handed out twice). The claim then finishes in a worker thread
(`ClaimBoot`): the order's admin replaces the pool's through the management API, the disk grows
if the order's is larger, the order's limits are applied, and `instance.ready` goes out with
`boot: "pool"`. If that fails the VM is booted the ordinary way (restore, then cold).

Pool VMs hold capacity slots, but customers come first: the host consumes create-vm while slots
not held by pool VMs are free, and a create-vm that misses the pool on a full host retires a pool
VM to make room (`evict_choice`). The pool thread (`Pool.run`) starts missing pool VMs one at a
time into idle slots only, replaces one whose QEMU died, and recycles one older than
`WARREN_POOL_RECYCLE` seconds.

Pure parts (parse, pick, census, eviction) are functions over records, tested without QEMU.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vmbackend.host.state import ACCEPTED, BOOTING, READY, VMRecord
from vmbackend.protocol import messages
from vmbackend.protocol.messages import CreateVM

log = logging.getLogger(__name__)

POOL_PREFIX = "pool-"
MAX_COUNT = 64
FAILURE_PAUSE = 60.0  # seconds before an entry whose pool VM failed to boot is tried again
TICK = 1.0


@dataclass(frozen=True)
class PoolEntry:
    image: str
    memory_mb: int
    count: int
    vcpus: int = messages.VCPUS[2]
    disk_gb: int = messages.DISK_GB[2]

    @property
    def key(self) -> str:
        return f"{self.image}:{self.memory_mb}"


def parse_pool(text: str) -> tuple[PoolEntry, ...]:
    """`image:memory_mb:count[,...]` ("" = no pool); ValueError saying what is wrong."""
    entries: list[PoolEntry] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        fields = item.split(":")
        if len(fields) != 3:
            raise ValueError(f"pool entry {item!r} is not image:memory_mb:count")
        image, memory, count = fields
        if not messages.IMAGE_RE.fullmatch(image):
            raise ValueError(f"pool entry {item!r}: bad image name")
        low, high, _default = messages.MEMORY_MB
        if not memory.isdigit() or not low <= int(memory) <= high:
            raise ValueError(f"pool entry {item!r}: memory_mb must be {low}..{high}")
        if not count.isdigit() or not 0 <= int(count) <= MAX_COUNT:
            raise ValueError(f"pool entry {item!r}: count must be 0..{MAX_COUNT}")
        entry = PoolEntry(image, int(memory), int(count))
        if any(e.key == entry.key for e in entries):
            raise ValueError(f"pool entry {entry.key} is given twice")
        entries.append(entry)
    return tuple(entries)


def is_pool_id(vm_id: str) -> bool:
    return vm_id.startswith(POOL_PREFIX)


def entry_of(record: VMRecord) -> str:
    return f"{record.image}:{record.memory_mb}"


def fits(record: VMRecord, cmd: CreateVM) -> bool:
    """Whether ready pool VM `record` can become `cmd`'s VM (its disk may only grow)."""
    return (
        record.pool
        and record.status == READY
        and record.image == cmd.image
        and record.memory_mb == cmd.memory_mb
        and record.vcpus == cmd.vcpus
        and record.disk_gb <= cmd.disk_gb
        # Its plain ports are forwarded (or not) since its QEMU started: on a host with TLS a
        # pool VM serves only orders that want them as it has them (a host without TLS keeps
        # them open for every VM, docs/tls.md).
        and ("amqps" not in record.ports or record.plain_ports == cmd.plain_ports)
    )


def pick(records: Iterable[VMRecord], cmd: CreateVM, unavailable: set[str]) -> VMRecord | None:
    """The pool VM `cmd` claims, or None (a miss): an exact disk size first (no growing), then
    the oldest (the next to be recycled anyway). `unavailable`: ids something works on."""
    candidates = [r for r in records if fits(r, cmd) and r.vm_id not in unavailable]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (r.disk_gb != cmd.disk_gb, r.created_at, r.vm_id))


def members(records: Iterable[VMRecord]) -> list[VMRecord]:
    """The pool VMs that hold a slot (starting or ready)."""
    return [r for r in records if r.pool and r.status in (ACCEPTED, BOOTING, READY)]


def census(records: Iterable[VMRecord], entries: Iterable[PoolEntry]) -> list[dict[str, Any]]:
    """Per entry: target, ready, starting (what the heartbeat reports and staff see)."""
    pool = members(records)
    out = []
    for entry in entries:
        mine = [r for r in pool if entry_of(r) == entry.key]
        out.append(
            {
                "image": entry.image,
                "memory_mb": entry.memory_mb,
                "target": entry.count,
                "ready": sum(1 for r in mine if r.status == READY),
                "starting": sum(1 for r in mine if r.status != READY),
            }
        )
    return out


def missing(records: Iterable[VMRecord], entries: Iterable[PoolEntry]) -> list[PoolEntry]:
    """Entries with fewer pool VMs than their count, one item per missing VM, in entry order."""
    pool = members(records)
    out: list[PoolEntry] = []
    for entry in entries:
        have = sum(1 for r in pool if entry_of(r) == entry.key)
        out.extend([entry] * max(0, entry.count - have))
    return out


def evict_choice(records: Iterable[VMRecord], unavailable: set[str]) -> VMRecord | None:
    """The pool VM to retire when a paying order needs its slot: one still starting first (it
    serves nobody yet), then the oldest ready one."""
    pool = [r for r in members(records) if r.vm_id not in unavailable]
    if not pool:
        return None
    return min(pool, key=lambda r: (r.status == READY, r.created_at, r.vm_id))


def claimed_machines(records: Iterable[VMRecord]) -> set[str]:
    """Pool VM ids that a customer's record runs on (their pool records are stale)."""
    return {r.machine_id for r in records if not r.pool and r.machine_id}


def new_pool_command(entry: PoolEntry) -> CreateVM:
    """A create-vm for one new pool VM: its own id and random admin credentials."""
    return CreateVM(
        vm_id=POOL_PREFIX + secrets.token_hex(12),
        image=entry.image,
        memory_mb=entry.memory_mb,
        vcpus=entry.vcpus,
        disk_gb=entry.disk_gb,
        admin_username="pool-" + secrets.token_hex(6),
        admin_password=messages.generate_password(),
        password_generated=False,
        limits={},
    )


class Pool:
    """The pool thread: keep the configured pool VMs, one boot at a time, into idle slots."""

    def __init__(self, cfg: Any, registry: Any, commands: Any):
        self.cfg = cfg
        self.registry = registry
        self.commands = commands
        self.nudge = threading.Event()
        self.paused_until: dict[str, float] = {}

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the pool must never stop the daemon
                log.exception("pool tick failed host_id=%s", self.cfg.host_id)
            self.nudge.wait(TICK)
            self.nudge.clear()

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.registry.lock:
            records = list(self.registry.records.values())
            busy = set(self.registry.busy) | set(self.registry.boots)
        for record in records:
            if not record.pool or record.vm_id in busy:
                continue
            if record.status == "failed":
                self.paused_until[entry_of(record)] = now + FAILURE_PAUSE
                self.commands.retire_pool(record, "its boot failed")
            elif record.status == READY and now - record.created_at > self.cfg.pool_recycle:
                self.commands.retire_pool(record, "recycled: unused for too long")
        with self.registry.lock:
            if any(
                r.pool and r.vm_id in self.registry.boots for r in self.registry.records.values()
            ):
                return  # one pool boot at a time: customers' boots share the CPU
            todo = missing(self.registry.records.values(), self.cfg.pool)
            todo = [e for e in todo if self.paused_until.get(e.key, 0) <= now]
            if not todo:
                return
            cmd = new_pool_command(todo[0])
            if self.registry.pool_in_the_way(cmd):
                return  # only into room nobody uses
            record, failure = self.registry.add_new(cmd, pool=True)
        log.info(
            "pool vm starting host_id=%s vm_id=%s image=%s memory_mb=%s",
            self.cfg.host_id,
            record.vm_id,
            record.image,
            record.memory_mb,
        )
        if failure is not None:
            self.registry.report(record, None, {}, status="failed", reason=failure)
            return
        self.registry.report(record, None, {})  # durable before QEMU starts
        self.commands.start_boot(record, None)
