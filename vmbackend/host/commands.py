"""What the daemon does to one VM's QEMU: boots in worker threads, start/stop/restart/delete,
adoption of running QEMUs; with the watcher and self-healing (self_healing.py, the policy in
healing.py) and the customer's console (console.py) as parts of the same `Commands`.

Every function here may block for minutes; none runs on the connection's thread and none touches
a channel. State changes go through `Registry.report`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from vmbackend.host.boot import Boot, cleanup, spec_for
from vmbackend.host.claim import ClaimBoot
from vmbackend.host.config import Config
from vmbackend.host.console import ConsoleCommands
from vmbackend.host.healing import RestartPolicy
from vmbackend.host.registry import Registry
from vmbackend.host.rules import (
    DELETE,
    WAIT_FOR_BOOT,
    command_plan,
)
from vmbackend.host.self_healing import SelfHealing
from vmbackend.host.state import BOOTING, DELETED, LOST, READY, STOPPED, StateStore, VMRecord
from vmbackend.machine.base import Machine, MachineError, MachineGone
from vmbackend.protocol.messages import (
    ConsoleCommand,
    Rejected,
    VMCommand,
)

log = logging.getLogger(__name__)


class Commands(SelfHealing, ConsoleCommands):
    """The running QEMUs of this host (`machines`) and the commands that change them."""

    def __init__(
        self,
        cfg: Config,
        store: StateStore,
        registry: Registry,
        after_boot: Callable[[], None] = lambda: None,
    ):
        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.after_boot = after_boot  # a slot may have freed up: look at consuming again
        self.machines: dict[str, Machine] = {}
        self.policy = RestartPolicy(cfg.restart_burst, cfg.restart_interval, cfg.restart_delay)

    # -- machines
    def adopt(self, record: VMRecord) -> Machine | None:
        try:  # MachineGone too when the driver's VMs never outlive a daemon (simulated)
            machine = self.cfg.machines().adopt(
                spec_for(self.cfg, record),
                self.store.vm_dir(record.machine_name),
                self.cfg.image_dir,
            )
        except MachineGone:
            return None
        except (MachineError, ValueError, KeyError) as exc:
            log.error(
                "adopt failed host_id=%s vm_id=%s error=%s", self.cfg.host_id, record.vm_id, exc
            )
            return None
        self.machines[record.vm_id] = machine
        return machine

    def machine_for(self, record: VMRecord) -> Machine | None:
        machine = self.machines.get(record.vm_id)
        if machine is None:
            # Race: a boot or heal reports ready before its thread hands its QEMU over to
            # `machines`; a stop-vm in between found no machine, reported stopped and left that
            # QEMU running unknown to anyone (found by the generated schedules, issue 20).
            job = self.registry.boot_of(record.vm_id)
            machine = job[0].machine if job is not None else None
        if machine is None:
            machine = self.adopt(record)
        return machine

    def boot(self, record: VMRecord, machine: Machine | None = None) -> Boot:
        return Boot(
            self.cfg,
            self.store,
            record,
            self.registry.report,
            machine=machine,
            existing_disk=record.ever_ready,
        )

    def start_boot(
        self, record: VMRecord, machine: Machine | None, boot: Boot | None = None
    ) -> threading.Thread:
        """Boot (or resume booting) `record` in a worker thread, registered so that delete-vm
        can cancel it and start-vm can wait for it. Rejected when the VM is being deleted."""
        boot = boot or self.boot(record, machine)

        def run() -> None:
            try:
                boot.run()
            finally:
                with self.registry.lock:
                    if boot.machine is not None and record.status in (BOOTING, READY):
                        self.machines[record.vm_id] = boot.machine
                    self.registry.end_job(record.vm_id)
            self.after_boot()

        thread = threading.Thread(target=run, name=f"boot-{record.vm_id}", daemon=True)
        self.registry.start_job(record.vm_id, boot, thread)
        return thread

    # -- the warm pool (vmbackend/host/pool.py)
    def start_claim(
        self, record: VMRecord, machine: Machine | None = None, *, resumed: bool = False
    ) -> threading.Thread:
        """Finish a pool claim in a worker thread (vmbackend/host/claim.py): on the pool VM's QEMU
        (found by `record.machine_id`), else the ordinary boot."""
        with self.registry.lock:
            source = record.claimed_from.get("vm_id", "")
            machine = machine or self.machines.pop(source, None) or self.adopt(record)
        boot = ClaimBoot(self.cfg, self.store, record, self.registry.report, machine=machine)
        boot.resumed = resumed
        return self.start_boot(record, machine, boot)

    def retire_pool(self, record: VMRecord, reason: str) -> None:
        """Stop a pool VM and forget it (crashed, recycled, evicted for a paying order, or its
        boot failed): at once in the books, its QEMU and folder in a worker thread."""
        with self.registry.lock:
            if record.status != DELETED:
                self.registry.report(record, None, {}, status=DELETED)
            running = self.registry.boots.get(record.vm_id)
            machine = self.machines.pop(record.vm_id, None)
        log.info(
            "pool vm retired host_id=%s vm_id=%s reason=%s", self.cfg.host_id, record.vm_id, reason
        )

        def finish() -> None:
            nonlocal machine
            if running is not None:
                boot, thread = running
                boot.cancel.set()
                if boot.machine is not None:
                    with contextlib.suppress(MachineError):
                        boot.machine.kill()
                thread.join(timeout=self.cfg.stop_timeout + 30)
                machine = boot.machine or machine
            cleanup(self.cfg, self.store, record, machine or self.adopt(record))
            with self.registry.lock:
                self.machines.pop(record.vm_id, None)
                if self.registry.records.get(record.vm_id) is record:
                    del self.registry.records[record.vm_id]
                self.store.remove(record.vm_id, record.machine_name)
            self.after_boot()

        threading.Thread(target=finish, name=f"retire-{record.vm_id}", daemon=True).start()

    def mark_lost(self, record: VMRecord, reason: str) -> None:
        log.error(
            "vm lost host_id=%s vm_id=%s restart_count=%s reason=%s",
            self.cfg.host_id,
            record.vm_id,
            record.restart_count,
            reason,
        )
        self.machines.pop(record.vm_id, None)
        self.registry.report(
            record, "instance.lost", {"reason": reason}, status=LOST, reason=reason, healing=False
        )

    # -- host commands
    def run(self, cmd: VMCommand | ConsoleCommand) -> dict[str, Any]:
        """One host command in a worker thread; returns the response (Rejected: the reason).
        The console's commands (and a restart-vm with a request id) also publish their outcome."""
        if isinstance(cmd, VMCommand) and not cmd.request_id:
            return self.run_vm_command(cmd)
        return self.run_console(cmd)

    def run_vm_command(self, cmd: VMCommand) -> dict[str, Any]:
        """start/stop/restart/delete one VM. Returns the response."""
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
        that fails leaves it lost with the reason (disk kept) and raises Rejected. The boot runs
        registered in `boots`, so a delete-vm meanwhile cancels it instead of waiting."""
        machine = self.machine_for(record)
        if machine is not None and machine.is_running():
            if record.status == READY:
                return
            # QEMU already runs: a start cut short by a daemon stop. Wait for it, never a
            # second QEMU on the same disk.
            if record.status != BOOTING:
                self.registry.report(
                    record,
                    "instance.started",
                    {},
                    status=BOOTING,
                    stage="vm_starting",
                    boot_started_at=time.time(),
                )
        else:
            machine = None
        boot = Boot(
            self.cfg, self.store, record, self.registry.report, machine=machine, existing_disk=True
        )
        self.start_boot(record, machine, boot).join()
        if boot.cancel.is_set():
            raise Rejected("start-vm cancelled: the VM is being deleted")
        if record.status != READY:
            raise Rejected(f"start-vm failed: {record.reason}")
        if record.restarts or record.restart_failures:  # started by hand: the policy starts afresh
            self.registry.report(record, None, {}, restarts=[], restart_failures=0)

    def delete(self, record: VMRecord) -> None:
        """Destroy the VM and its files, free its ports and slot, whatever runs beside it: no
        boot starts once the delete holds the VM (`Registry.start_job`); a running boot or heal
        is cancelled and its QEMU killed; the other holders (a stop, a resize, a password change)
        see their QEMU killed and are waited for, so that their last events come before
        instance.deleted and nothing writes to the folder once it is removed."""
        vm_id = record.vm_id
        deadline = time.monotonic() + self.cfg.stop_timeout + 30
        seen: list[Machine] = []  # every QEMU this VM had meanwhile: none may outlive it

        def kill(machine: Machine | None) -> None:
            if machine is None:
                return
            if all(machine is not other for other in seen):
                seen.append(machine)
            try:
                machine.kill()
            except MachineError as exc:  # not started yet or already gone
                log.info(
                    "kill for delete host_id=%s vm_id=%s error=%s", self.cfg.host_id, vm_id, exc
                )

        kill(self.machine_for(record))
        while True:
            with self.registry.lock:
                running = self.registry.boots.get(vm_id)
                others = self.registry.others_holding(vm_id, "delete-vm")
                left = deadline - time.monotonic()
                if left <= 0 or (running is None and not others):
                    break
                current = self.machines.get(vm_id)
            if running is None:  # a stop, resize or password change: its QEMU goes now
                kill(current)  # outside the lock: a QEMU may take seconds to die
                with self.registry.lock:  # then wait for a release or a job's end
                    if vm_id not in self.registry.boots and self.registry.others_holding(
                        vm_id, "delete-vm"
                    ):
                        self.registry.changed.wait(min(left, 1.0))
                continue
            job, thread = running
            job.cancel.set()
            kill(job.machine)
            thread.join(timeout=left)
            # Race: the job may have created (and started) its Machine after we looked above;
            # once its thread has ended, its machine is the one to destroy.
            kill(job.machine)
        if running is not None or others:
            log.warning(
                "delete went ahead of work still running host_id=%s vm_id=%s others=%s",
                self.cfg.host_id,
                vm_id,
                others,
            )
        with self.registry.lock:
            machine = self.machines.pop(vm_id, None) or (seen[-1] if seen else None)
        cleanup(self.cfg, self.store, record, machine)  # every other one in `seen` is killed
        self.registry.report(record, "instance.deleted", {}, status=DELETED, ports={})
        log.info("vm deleted host_id=%s vm_id=%s", self.cfg.host_id, vm_id)
