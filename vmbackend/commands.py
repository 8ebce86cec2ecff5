"""What the daemon does to one VM's QEMU: boots in worker threads, start/stop/restart/delete,
adoption of running QEMUs and the liveness check.

Every function here may block for minutes; none runs on the connection's thread and none touches
a channel. State changes go through `Registry.report`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from vmbackend.boot import Boot, cleanup, spec_for
from vmbackend.config import Config
from vmbackend.machine import Machine, MachineError, MachineGone
from vmbackend.messages import Rejected, VMCommand
from vmbackend.registry import DELETE, WAIT_FOR_BOOT, Registry, command_plan
from vmbackend.state import BOOTING, DELETED, LOST, READY, STOPPED, StateStore, VMRecord

log = logging.getLogger(__name__)


class Commands:
    """The running QEMUs of this host (`machines`) and the commands that change them."""

    def __init__(self, cfg: Config, store: StateStore, registry: Registry,
                 after_boot: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.after_boot = after_boot  # a slot may have freed up: look at consuming again
        self.machines: dict[str, Machine] = {}

    # -- machines
    def adopt(self, record: VMRecord) -> Machine | None:
        try:
            machine = Machine.adopt(spec_for(self.cfg, record), self.store.vm_dir(record.vm_id),
                                    self.cfg.image_dir)
        except MachineGone:
            return None
        except (MachineError, ValueError, KeyError) as exc:
            log.error("adopt failed host_id=%s vm_id=%s error=%s", self.cfg.host_id,
                      record.vm_id, exc)
            return None
        self.machines[record.vm_id] = machine
        return machine

    def machine_for(self, record: VMRecord) -> Machine | None:
        machine = self.machines.get(record.vm_id)
        if machine is None:
            machine = self.adopt(record)
        return machine

    def boot(self, record: VMRecord, machine: Machine | None = None) -> Boot:
        return Boot(self.cfg, self.store, record, self.registry.report, machine=machine,
                    existing_disk=record.ever_ready)

    def start_boot(self, record: VMRecord, machine: Machine | None) -> None:
        """Boot (or resume booting) `record` in a worker thread."""
        boot = self.boot(record, machine)

        def run() -> None:
            boot.run()
            with self.registry.lock:
                if boot.machine is not None and record.status in (BOOTING, READY):
                    self.machines[record.vm_id] = boot.machine
                self.registry.boots.pop(record.vm_id, None)
            self.after_boot()

        thread = threading.Thread(target=run, name=f"boot-{record.vm_id}", daemon=True)
        with self.registry.lock:
            self.registry.boots[record.vm_id] = (boot, thread)
        thread.start()

    def mark_lost(self, record: VMRecord, reason: str) -> None:
        log.warning("vm lost host_id=%s vm_id=%s reason=%s", self.cfg.host_id, record.vm_id,
                    reason)
        self.machines.pop(record.vm_id, None)
        self.registry.report(record, "instance.lost", {"reason": reason}, status=LOST,
                             reason=reason)

    def check_liveness(self) -> None:
        """Mark ready VMs whose QEMU died as lost (runs with the heartbeat)."""
        for record in self.registry.unattended_ready():
            machine = self.machines.get(record.vm_id)
            if machine is None or not machine.is_running():
                if self.registry.is_unattended_ready(record):
                    self.mark_lost(record, "QEMU process exited")

    # -- host commands
    def run(self, cmd: VMCommand) -> dict[str, Any]:
        """start/stop/restart/delete one VM; runs in a worker thread. Returns the response."""
        with self.registry.lock:
            record = self.registry.records[cmd.vm_id]
        boot = self.registry.boot_of(record.vm_id)
        plan = command_plan(record, cmd.command, boot_running=boot is not None)
        if plan == DELETE:
            self.delete(record)
            return {"vm-id": record.vm_id, "status": "deleted"}
        if plan == WAIT_FOR_BOOT:
            boot[1].join(timeout=self.cfg.boot_deadline)
            return {"vm-id": record.vm_id, "status": record.status}
        if cmd.command in ("stop-vm", "restart-vm"):
            self.stop(record, kill=cmd.kill)
        if cmd.command in ("start-vm", "restart-vm"):
            self.start(record)
        return {"vm-id": record.vm_id, "status": record.status}

    def stop(self, record: VMRecord, *, kill: bool) -> None:
        machine = self.machine_for(record)
        if machine is not None and machine.is_running():
            if kill:
                machine.kill()
            else:
                machine.powerdown(timeout=self.cfg.stop_timeout)
        self.machines.pop(record.vm_id, None)
        if record.status != STOPPED:
            self.registry.report(record, "instance.stopped", {}, status=STOPPED)
        log.info("vm stopped host_id=%s vm_id=%s kill=%s", self.cfg.host_id, record.vm_id, kill)

    def start(self, record: VMRecord) -> None:
        """Boot a stopped (or lost) VM from its disk and wait until it is ready again; a start
        that fails leaves it lost with the reason (disk kept) and raises Rejected."""
        machine = self.machine_for(record)
        if machine is not None and machine.is_running():
            if record.status == READY:
                return
            # QEMU already runs: a start cut short by a daemon stop. Wait for it, never a
            # second QEMU on the same disk.
            if record.status != BOOTING:
                self.registry.report(record, "instance.started", {}, status=BOOTING,
                                     stage="vm_starting", boot_started_at=time.time())
        else:
            machine = None
        boot = Boot(self.cfg, self.store, record, self.registry.report, machine=machine,
                    existing_disk=True)
        boot.run()
        if record.status != READY:
            raise Rejected(f"start-vm failed: {record.reason}")
        if boot.machine is not None:
            self.machines[record.vm_id] = boot.machine

    def delete(self, record: VMRecord) -> None:
        """Cancel a running boot, destroy the VM and its files, free its ports and slot."""
        boot = self.registry.boot_of(record.vm_id)
        machine = self.machine_for(record)
        if boot is not None:
            running, thread = boot
            running.cancel.set()
            if running.machine is not None:
                machine = running.machine
            if machine is not None:
                try:
                    machine.kill()
                except MachineError as exc:  # not started yet or already gone
                    log.info("kill during cancel host_id=%s vm_id=%s error=%s",
                             self.cfg.host_id, record.vm_id, exc)
            thread.join(timeout=self.cfg.stop_timeout + 30)
            # Race: the boot may have created (and started) its Machine after we looked above;
            # once the boot thread has ended, its machine is the one to destroy.
            if running.machine is not None:
                machine = running.machine
        cleanup(self.cfg, self.store, record, machine)
        self.machines.pop(record.vm_id, None)
        self.registry.report(record, "instance.deleted", {}, status=DELETED, ports={})
        log.info("vm deleted host_id=%s vm_id=%s", self.cfg.host_id, record.vm_id)
