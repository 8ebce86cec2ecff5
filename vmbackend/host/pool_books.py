"""The warm pool's side of the Registry (vmbackend/host/pool.py says what the pool is).

`PoolBooks` is a part of `Registry` (registry.py): claiming a ready pool VM for a create-vm,
evicting one for a paying order, and the census the heartbeat reports, all under the Registry's
lock and written through its state store like any other record.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from vmbackend.host import pool as pool_mod
from vmbackend.host.config import Config
from vmbackend.host.rules import new_record
from vmbackend.host.state import DELETED, StateStore, VMRecord
from vmbackend.protocol import capacity
from vmbackend.protocol.messages import CreateVM

log = logging.getLogger("vmbackend.host.registry")  # the Registry's log, as before the split


class PoolBooks:
    """The pool methods of a Registry; the Registry provides what is declared here."""

    cfg: Config
    store: StateStore
    lock: threading.RLock
    records: dict[str, VMRecord]
    busy: dict[str, list[str]]
    boots: dict[str, Any]

    def report(
        self, record: VMRecord, event_type: str | None, fields: dict[str, Any], **updates: Any
    ) -> None:
        raise NotImplementedError

    def idle_slots(self) -> int:
        raise NotImplementedError

    def resources(self, *, include_pool: bool = False) -> capacity.Resources:
        raise NotImplementedError

    def pool_census(self) -> list[dict[str, Any]]:
        with self.lock:
            return pool_mod.census(list(self.records.values()), self.cfg.pool)

    def _unavailable(self) -> set[str]:
        return set(self.busy) | set(self.boots)

    def claim_pool(self, cmd: CreateVM) -> VMRecord | None:
        """Make a ready pool VM that fits `cmd` into its VM, atomically and durably: the new
        record (on the pool VM's QEMU and folder, the pool admin kept in `claimed_from` for the
        swap) is written first, then the pool record's file is removed; a SIGKILL in between
        leaves a pool record that recovery sees claimed. None: a miss."""
        with self.lock:
            source = pool_mod.pick(self.records.values(), cmd, self._unavailable())
            if source is None:
                return None
            record = new_record(self.cfg, cmd)
            record.hostname = source.hostname  # the pool VM's own, already set in the guest
            record.network = source.network
            record.ports = dict(source.ports)
            record.tap, record.mac = source.tap, source.mac
            record.ip_addresses = list(source.ip_addresses)
            # Its certificate, issued for this VM (its own key) when it was filled: the claim
            # need not issue and install another (the guest already serves it).
            record.tls_cert = source.tls_cert
            record.tls_mode = source.tls_mode
            record.machine_id = source.machine_name
            record.boot = "pool"
            record.boot_started_at = time.time()
            record.claimed_from = {
                "vm_id": source.vm_id,
                "admin_username": source.admin_username,
                "admin_password": source.admin_password,
                "disk_gb": source.disk_gb,
            }
            self.store.save(record)
            self.store.remove_record(source.vm_id)
            del self.records[source.vm_id]
            self.records[record.vm_id] = record
        log.info(
            "pool vm claimed host_id=%s vm_id=%s pool_vm_id=%s",
            self.cfg.host_id,
            record.vm_id,
            source.vm_id,
        )
        return record

    def drop_claimed_pool(self) -> list[str]:
        """After a restart: forget pool records a claiming record already runs on (a SIGKILL
        between `claim_pool`'s two writes); their ids."""
        with self.lock:
            claimed = pool_mod.claimed_machines(self.records.values())
            stale = [r.vm_id for r in self.records.values() if r.pool and r.vm_id in claimed]
            for vm_id in stale:
                self.store.remove_record(vm_id)
                del self.records[vm_id]
            return stale

    def pool_in_the_way(self, want: capacity.Sized) -> bool:
        """Whether pool VMs take what a VM of size `want` needs (a slot or resources)."""
        with self.lock:
            return self.idle_slots() <= 0 or (
                capacity.refusal(self.resources(include_pool=True), want) is not None
            )

    def evict_pool(self) -> VMRecord | None:
        """Give a pool VM's slot to a paying order: the chosen one is deleted in the books at
        once (durably); `Commands.retire_pool` stops its QEMU. None: no pool VM to give."""
        with self.lock:
            victim = pool_mod.evict_choice(self.records.values(), set(self.busy))
            if victim is None:
                return None
            self.report(victim, None, {}, status=DELETED)
            return victim
