"""Durable per-VM state files: what this host promised, survives SIGKILL.

Layout under the daemon's state dir:

    vms/<vm_id>.json      the VMRecord (mode 0600: it holds the VM's admin password)
    machines/<vm_id>/     the Machine's folder (overlay disk, sockets, pidfile, logs)

A write is temp file + fsync + rename + fsync of the folder, so after a crash a record is either
the old or the new version, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbackend.files import write_atomic  # one implementation; importers of state keep it
from vmbackend.protocol.messages import VM_ID_RE

log = logging.getLogger(__name__)

# Statuses. A VM holds a capacity slot in every status except failed and deleted.
ACCEPTED = "accepted"  # recorded, QEMU not started yet
BOOTING = "booting"  # QEMU started, waiting for readiness
READY = "ready"  # management API answered with the VM's credentials
STOPPED = "stopped"
FAILED = "failed"  # could not be made ready; machine cleaned up
LOST = "lost"  # QEMU died while nobody asked it to
DELETED = "deleted"  # gone; the record stays only until instance.deleted is confirmed
FREE_SLOT_STATUSES = (FAILED, DELETED)

# The host side's state machine: every status change goes through `move`, which checks it here.
# A VM that was ready once never goes to FAILED (that would delete its disk): a failed start or
# a start cut off by a crash ends LOST, its disk kept and startable again.
TRANSITIONS: dict[str, frozenset[str]] = {
    ACCEPTED: frozenset({BOOTING, FAILED, DELETED}),
    BOOTING: frozenset({READY, FAILED, LOST, DELETED}),
    READY: frozenset({STOPPED, LOST, DELETED, BOOTING}),  # booting: self-healing after a crash
    STOPPED: frozenset({BOOTING, LOST, DELETED}),
    LOST: frozenset({BOOTING, STOPPED, DELETED}),
    FAILED: frozenset({DELETED}),
    DELETED: frozenset(),
}


class IllegalTransition(Exception):
    """A status change the table does not allow: a bug in the daemon, never input."""


def can_move(old: str, new: str, *, ever_ready: bool = False) -> bool:
    if old == new:
        return True
    if new == FAILED and ever_ready:
        return False  # failing would clean up the customer's disk
    return new in TRANSITIONS.get(old, frozenset())


@dataclass
class VMRecord:
    vm_id: str
    image: str
    memory_mb: int
    vcpus: int
    disk_gb: int
    hostname: str
    admin_username: str
    admin_password: str = field(repr=False)
    password_generated: bool = False
    limits: dict[str, int] = field(default_factory=dict)
    status: str = ACCEPTED
    stage: str = ""
    network: str = "user"
    ports: dict[str, int] = field(default_factory=dict)
    tap: str = ""
    mac: str = ""
    ip_addresses: list[str] = field(default_factory=list)
    management_url: str = ""
    amqp_url: str = ""
    boot: str = ""
    seconds: float = 0.0
    reason: str = ""
    created_at: float = field(default_factory=time.time)
    boot_started_at: float = 0.0
    ever_ready: bool = (
        False  # was READY once: its disk is the customer's, only delete-vm removes it
    )
    # Self-healing (vmbackend/host/healing.py): start times of the restart attempts inside the
    # policy's window, all restarts ever, and whether a heal is under way (a daemon restarted
    # in the middle of one goes on healing instead of waiting for a start-vm).
    restarts: list[float] = field(default_factory=list)
    restart_count: int = 0
    restart_failures: int = 0  # failed restart attempts since the VM was last ready
    healing: bool = False
    last_event: dict[str, Any] = field(default_factory=dict)  # {"type", "fields"} last queued
    # The console's done requests, newest last (at most registry.MAX_REQUESTS): {"request_id",
    # "command", "type", "fields"}; a repeated request id re-publishes its outcome.
    requests: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    outbox: list[dict[str, Any]] = field(default_factory=list)
    # TLS (docs/tls.md): whether the plain AMQP/management ports stay open to customers (the
    # plan's choice), and the VM's current certificate (PEM, public; its key is only in the guest).
    plain_ports: bool = True
    tls_cert: str = ""
    # How the VM gets its certificate, chosen at its first launch from its image: "baked" (the
    # listeners are in the image, the host writes one file and forwards the TLS ports only then:
    # host/baked_tls.py), else the run-time install ("installed", or "" in older records).
    tls_mode: str = ""
    # The warm pool (vmbackend/host/pool.py): a pool VM is never shown to anyone (no events, not in
    # list-vms, no host command reaches it) until a create-vm claims it. The claiming VM runs on
    # the pool VM's QEMU and folder (`machine_id`, the pool VM's id: QEMU's name and the folder
    # under machines/); `claimed_from` holds the pool VM's id and admin until the claim is done.
    pool: bool = False
    machine_id: str = ""
    claimed_from: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def machine_name(self) -> str:
        """The id of this VM's QEMU and folder: the pool VM's it was claimed from, else its own."""
        return self.machine_id or self.vm_id

    def holds_slot(self) -> bool:
        return self.status not in FREE_SLOT_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VMRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "ever_ready" not in values:  # a record written before the field existed
            values["ever_ready"] = values.get("status") in (READY, STOPPED, LOST) or bool(
                values.get("management_url")
            )
        return cls(**values)


def move(record: VMRecord, status: str) -> None:
    """Set `record.status` if the table allows it; an illegal change is logged and refused."""
    if not can_move(record.status, status, ever_ready=record.ever_ready):
        log.error(
            "illegal status change vm_id=%s from=%s to=%s ever_ready=%s",
            record.vm_id,
            record.status,
            status,
            record.ever_ready,
        )
        raise IllegalTransition(f"vm {record.vm_id}: {record.status} -> {status}")
    record.status = status
    if status == READY:
        record.ever_ready = True


class StateStore:
    """The state files of one host (one daemon)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.vms = self.root / "vms"
        self.machines = self.root / "machines"
        self.vms.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.machines.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _checked(self, vm_id: str) -> str:
        if not VM_ID_RE.fullmatch(vm_id):
            raise ValueError(f"bad vm id {vm_id!r}")
        return vm_id

    def path(self, vm_id: str) -> Path:
        return self.vms / f"{self._checked(vm_id)}.json"

    def vm_dir(self, vm_id: str) -> Path:
        return self.machines / self._checked(vm_id)

    def save(self, record: VMRecord) -> None:
        data = json.dumps(record.to_dict(), sort_keys=True, indent=1).encode("utf-8")
        write_atomic(self.path(record.vm_id), data)

    def load(self, vm_id: str) -> VMRecord | None:
        try:
            return VMRecord.from_dict(json.loads(self.path(vm_id).read_text("utf-8")))
        except FileNotFoundError:
            return None

    def load_all(self) -> dict[str, VMRecord]:
        """Every record on disk; an unreadable file is logged and skipped, never fatal."""
        records: dict[str, VMRecord] = {}
        for path in sorted(self.vms.glob("*.json")):
            try:
                record = VMRecord.from_dict(json.loads(path.read_text("utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.error("state file unreadable path=%s error=%s", path, exc)
                continue
            if record.vm_id != path.stem:
                log.error("state file name mismatch path=%s vm_id=%s", path, record.vm_id)
                continue
            records[record.vm_id] = record
        return records

    def remove(self, vm_id: str, machine_name: str = "") -> None:
        """Forget the VM: its machine folder (`machine_name`, default its own) and its record."""
        shutil.rmtree(self.vm_dir(machine_name or vm_id), ignore_errors=True)
        self.path(vm_id).unlink(missing_ok=True)

    def remove_record(self, vm_id: str) -> None:
        """Forget only the record (a claimed pool VM: its folder is the claiming VM's now)."""
        self.path(vm_id).unlink(missing_ok=True)
