"""What the daemon does to one VM's QEMU: boots in worker threads, start/stop/restart/delete,
adoption of running QEMUs, the watcher and self-healing (vmbackend/host/healing.py).

Every function here may block for minutes; none runs on the connection's thread and none touches
a channel. State changes go through `Registry.report`.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from vmbackend.host.boot import Boot, cleanup, spec_for, urls_for
from vmbackend.host.claim import ClaimBoot
from vmbackend.host.config import Config
from vmbackend.host.healing import RestartPolicy
from vmbackend.host.registry import (
    COMMAND_DONE,
    COMMAND_FAILED,
    DELETE,
    WAIT_FOR_BOOT,
    Registry,
    command_plan,
    resize_refusal,
)
from vmbackend.host.state import BOOTING, DELETED, LOST, READY, STOPPED, StateStore, VMRecord
from vmbackend.machine import qemu
from vmbackend.machine.base import Machine, MachineError, MachineGone
from vmbackend.machine.management_api import ManagementAPI, ManagementAPIError
from vmbackend.machine.qemu import VMPaths
from vmbackend.protocol.messages import (
    ConsoleCommand,
    Rejected,
    ResizeVM,
    SetAdminPassword,
    VMCommand,
)

log = logging.getLogger(__name__)

QEMU_EXITED = "QEMU process exited unexpectedly"


class Heal:
    """One self-healing of one VM, registered in `Registry.boots` like a boot: attempts under
    the restart policy until the VM is ready, the policy gives up, or delete-vm cancels it."""

    def __init__(self, record: VMRecord, reason: str, machine: Machine | None = None):
        self.record = record
        self.reason = reason  # why the next attempt is needed (the crash, then a failed attempt)
        self.cancel = threading.Event()
        self.delay = 0.0
        self.resume = machine  # a QEMU of an attempt cut off by a daemon restart, still running
        self.boot: Boot | None = None

    @property
    def machine(self) -> Machine | None:
        """The current attempt's QEMU (delete-vm kills it)."""
        return self.boot.machine if self.boot is not None else self.resume


class Commands:
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
        can cancel it and start-vm can wait for it."""
        boot = boot or self.boot(record, machine)

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

    # -- watching and self-healing
    def watch(self, stop: threading.Event) -> None:
        """The watcher thread: every `watch_interval` seconds, heal ready VMs whose QEMU exited.
        One thread for all VMs (adopted QEMUs are not our children: no waitpid for them)."""
        while not stop.wait(self.cfg.watch_interval):
            self.check_liveness()

    def check_liveness(self) -> None:
        """Heal ready VMs whose QEMU exited (the watcher; the heartbeat runs it as a backstop)."""
        for record in self.registry.unattended_ready():
            machine = self.machines.get(record.vm_id)
            if machine is None or not machine.is_running():
                try:
                    if record.pool:  # nobody's yet: a new one replaces it (vmbackend/host/pool.py)
                        self.retire_pool(record, QEMU_EXITED)
                        continue
                    self.heal(record, QEMU_EXITED)
                except Exception:  # noqa: BLE001 - one VM's trouble must not stop the others
                    log.exception("heal failed host_id=%s vm_id=%s", self.cfg.host_id, record.vm_id)

    def heal(self, record: VMRecord, reason: str, *, recovering: bool = False) -> bool:
        """Start `record` again from its own disk in a worker thread, under the restart policy.

        Only a VM nobody works on: a stop/restart/delete-vm holds it busy (its QEMU exit is
        asked for) and a boot or another heal is in `boots` — checked under the registry lock
        together with the first status change, so a command that claims the VM afterwards sees
        it booting. `recovering`: the daemon's start-up (the VM may be booting: a heal cut off).
        False when nothing was done."""
        heal = Heal(record, reason)
        thread = threading.Thread(
            target=self._run_heal, args=(heal,), name=f"heal-{record.vm_id}", daemon=True
        )
        with self.registry.lock:
            vm_id = record.vm_id
            if recovering:
                if vm_id in self.registry.busy or vm_id in self.registry.boots:
                    return False
            elif not self.registry.is_unattended_ready(record):
                return False
            running = self.adopt(record)  # never a second QEMU on one disk
            if running is not None and record.status == READY:
                return False  # alive after all (a new daemon's first look): adopted
            heal.resume = running  # a heal's attempt cut off by a daemon restart: wait for it
            if running is None and not self._next_attempt(heal):
                return True
            self.registry.boots[vm_id] = (heal, thread)
        thread.start()
        return True

    def _next_attempt(self, heal: Heal) -> bool:
        """Ask the policy; publish instance.restarting (False: it gave up, the VM is lost)."""
        record, now = heal.record, time.time()
        decision = self.policy.decide(record.restarts, now, record.restart_failures)
        if not decision.restart:
            full = len(decision.recent) >= self.policy.burst  # the window's count says it first
            why = self.policy.describe(0 if full else record.restart_failures)
            self.mark_lost(record, f"{heal.reason} (gave up after {why})")
            return False
        heal.delay = decision.delay
        log.warning(
            "vm restarting host_id=%s vm_id=%s attempt=%s delay=%.1f reason=%s",
            self.cfg.host_id,
            record.vm_id,
            decision.attempt,
            decision.delay,
            heal.reason,
        )
        self.machines.pop(record.vm_id, None)
        self.registry.report(
            record,
            "instance.restarting",
            {"reason": heal.reason, "attempt": decision.attempt},
            status=BOOTING,
            stage="vm_starting",
            reason=heal.reason,
            healing=True,
            restarts=[*decision.recent, now],
            restart_count=record.restart_count + 1,
            boot_started_at=now,
        )
        return True

    def _run_heal(self, heal: Heal) -> None:
        record = heal.record
        try:
            while True:
                if heal.delay and heal.cancel.wait(heal.delay):
                    return
                if heal.cancel.is_set():
                    return
                heal.boot = Boot(
                    self.cfg,
                    self.store,
                    record,
                    self.registry.report,
                    machine=heal.resume,
                    existing_disk=True,
                    healing=True,
                    cancel=heal.cancel,
                )
                heal.resume = None
                heal.boot.run()
                if heal.cancel.is_set():
                    return
                if record.status == READY:
                    log.info(
                        "vm restarted host_id=%s vm_id=%s restart_count=%s",
                        self.cfg.host_id,
                        record.vm_id,
                        record.restart_count,
                    )
                    if record.restart_failures:
                        self.registry.report(record, None, {}, restart_failures=0)
                    return
                heal.reason = record.reason or "the restart failed"
                self.registry.report(record, None, {}, restart_failures=record.restart_failures + 1)
                with self.registry.lock:
                    if heal.cancel.is_set() or not self._next_attempt(heal):
                        return
        except Exception:  # noqa: BLE001 - a heal must end in ready or lost, never half-way
            log.exception("heal failed host_id=%s vm_id=%s", self.cfg.host_id, record.vm_id)
            if not heal.cancel.is_set() and record.status == BOOTING:
                self.mark_lost(record, f"{heal.reason} (the restart failed)")
        finally:
            with self.registry.lock:
                machine = heal.machine
                if machine is not None and record.status == READY:
                    self.machines[record.vm_id] = machine
                self.registry.boots.pop(record.vm_id, None)
            self.after_boot()

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
                    log.info(
                        "kill during cancel host_id=%s vm_id=%s error=%s",
                        self.cfg.host_id,
                        record.vm_id,
                        exc,
                    )
            thread.join(timeout=self.cfg.stop_timeout + 30)
            # Race: the boot may have created (and started) its Machine after we looked above;
            # once the boot thread has ended, its machine is the one to destroy.
            if running.machine is not None:
                machine = running.machine
        cleanup(self.cfg, self.store, record, machine)
        self.machines.pop(record.vm_id, None)
        self.registry.report(record, "instance.deleted", {}, status=DELETED, ports={})
        log.info("vm deleted host_id=%s vm_id=%s", self.cfg.host_id, record.vm_id)

    # -- the customer's console (docs/protocol.md): each ends in one outcome event
    def run_console(self, cmd: VMCommand | ConsoleCommand) -> dict[str, Any]:
        """Run a console command and publish instance.command_done (with what the VM has now)
        or instance.command_failed (the reason, never a password); remembered by request id."""
        with self.registry.lock:
            record = self.registry.records[cmd.vm_id]
        try:
            fields = self._console(record, cmd)
        except Exception as exc:  # noqa: BLE001 - every failure must end in command_failed
            if isinstance(exc, Rejected):
                reason = exc.reason
            else:
                log.exception(
                    "console command failed host_id=%s vm_id=%s command=%s",
                    self.cfg.host_id,
                    record.vm_id,
                    cmd.command,
                )
                reason = f"{cmd.command} failed: {type(exc).__name__}: {str(exc)[:300]}"
            reason = _without_secrets(reason, record, cmd)
            self.registry.finish_request(
                record, cmd.command, cmd.request_id, COMMAND_FAILED, {"reason": reason}
            )
            raise Rejected(reason) from None
        self.registry.finish_request(record, cmd.command, cmd.request_id, COMMAND_DONE, fields)
        response: dict[str, Any] = {"vm-id": record.vm_id, "status": record.status}
        response.update({key.replace("_", "-"): value for key, value in fields.items()})
        return response

    def _console(self, record: VMRecord, cmd: VMCommand | ConsoleCommand) -> dict[str, Any]:
        if isinstance(cmd, SetAdminPassword):
            self.set_admin_password(record, cmd)
            return {}
        if isinstance(cmd, ResizeVM):
            return self.resize(record, cmd)
        self.run_vm_command(cmd)  # restart-vm with a request id
        return {}

    def set_admin_password(self, record: VMRecord, cmd: SetAdminPassword) -> None:
        """The VM's admin gets `cmd.password` through its management API (the old one is refused
        from then on), that user's AMQP connections are closed, and the host keeps the new
        password (state file, the Machine's spec and fw_cfg file) for all it does later. A
        redelivery after a daemon restart mid-way finds the new password already set and goes on."""
        command_plan(
            record, cmd.command, boot_running=self.registry.boot_of(record.vm_id) is not None
        )
        if cmd.username != record.admin_username:
            raise Rejected(f"the VM's admin user is {record.admin_username}, not {cmd.username}")
        machine = self.machine_for(record)
        if machine is None or not machine.is_running():
            raise Rejected("the VM is down; try again when it is running")
        probe = urls_for(self.cfg, record, record.ip_addresses)[2]
        user = record.admin_username
        new = ManagementAPI(probe, user, cmd.password, timeout=10)
        try:
            if record.admin_password != cmd.password:
                old = ManagementAPI(probe, user, record.admin_password, timeout=10)
                try:
                    old.set_user(user, cmd.password)
                except ManagementAPIError as exc:
                    if exc.status != 401:
                        raise
                    new.whoami()  # refused with the old one: set already (before a restart)?
            new.whoami()
            closed = new.close_connections_of(user)
        except ManagementAPIError as exc:
            raise Rejected(f"the VM's management API did not take the new password: {exc}") from exc
        self.registry.report(record, None, {}, admin_password=cmd.password)
        machine.set_admin_password(cmd.password)
        log.info(
            "admin password set host_id=%s vm_id=%s user=%s connections_closed=%s",
            self.cfg.host_id,
            record.vm_id,
            user,
            closed,
        )

    def resize(self, record: VMRecord, cmd: ResizeVM) -> dict[str, Any]:
        """New memory/vCPUs through a clean stop and a start from the VM's own disk, the disk
        image grown first (only grows) and then the guest's root file system. Refused (nothing
        changed) when the disk would shrink or what grows does not fit the host. The VM ends
        running. Returns the sizes it has now."""
        command_plan(
            record, cmd.command, boot_running=self.registry.boot_of(record.vm_id) is not None
        )
        refusal = resize_refusal(record, cmd, self.registry.resources_without(record.vm_id))
        if refusal is not None:
            raise Rejected(refusal)
        sizes = {"memory_mb": cmd.memory_mb, "vcpus": cmd.vcpus, "disk_gb": cmd.disk_gb}
        old = (record.memory_mb, record.vcpus, record.disk_gb)
        if old == (cmd.memory_mb, cmd.vcpus, cmd.disk_gb) and record.status == READY:
            return sizes
        log.info(
            "vm resizing host_id=%s vm_id=%s from=%s to=%s",
            self.cfg.host_id,
            record.vm_id,
            "/".join(map(str, old)),
            f"{cmd.memory_mb}/{cmd.vcpus}/{cmd.disk_gb}",
        )
        self.stop(record, kill=False)
        disk = VMPaths(self.store.vm_dir(record.machine_name)).disk
        try:
            grew = disk.exists() and qemu.grow_disk(disk, cmd.disk_gb)
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            self._start_after_failed_resize(record)
            raise Rejected(f"the disk could not grow: {str(exc)[:300]}") from exc
        self.registry.report(
            record, None, {}, memory_mb=cmd.memory_mb, vcpus=cmd.vcpus, disk_gb=cmd.disk_gb
        )
        try:
            self.start(record)
        except Rejected as exc:
            raise Rejected(f"the VM did not come back after the resize: {exc.reason}") from exc
        machine = self.machines.get(record.vm_id)
        if grew and machine is not None:
            try:
                machine.grow_root()
            except MachineError as exc:  # the disk is bigger; the file system grows next time
                log.warning(
                    "root file system not grown host_id=%s vm_id=%s error=%s",
                    self.cfg.host_id,
                    record.vm_id,
                    exc,
                )
        log.info(
            "vm resized host_id=%s vm_id=%s memory_mb=%s vcpus=%s disk_gb=%s disk_grew=%s",
            self.cfg.host_id,
            record.vm_id,
            cmd.memory_mb,
            cmd.vcpus,
            cmd.disk_gb,
            grew,
        )
        return sizes

    def _start_after_failed_resize(self, record: VMRecord) -> None:
        """The resize could not go on: the VM runs again with its old sizes (best effort)."""
        try:
            self.start(record)
        except Rejected as exc:
            log.error(
                "start after a failed resize host_id=%s vm_id=%s reason=%s",
                self.cfg.host_id,
                record.vm_id,
                exc.reason,
            )


def _without_secrets(text: str, record: VMRecord, cmd: VMCommand | ConsoleCommand) -> str:
    """A reason for an event: no password of the VM's, old or new, bounded."""
    for secret in (record.admin_password, getattr(cmd, "password", "")):
        if secret:
            text = text.replace(secret, "***")
    return text[:1000]
