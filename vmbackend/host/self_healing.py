"""The watcher and the self-healing runs: a ready VM whose QEMU exited is started again.

`RestartPolicy` (healing.py) decides whether and when; `SelfHealing` is the part of `Commands`
(commands.py) that notices the exit (the watcher thread) and runs the attempts in a worker thread,
registered in `Registry.boots` like a boot so delete-vm can cancel them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from vmbackend.host.boot import Boot
from vmbackend.host.config import Config
from vmbackend.host.healing import RestartPolicy
from vmbackend.host.registry import Registry
from vmbackend.host.state import BOOTING, READY, StateStore, VMRecord
from vmbackend.machine.base import Machine

log = logging.getLogger("vmbackend.host.commands")  # the commands' log, as before the split

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


class SelfHealing:
    """The healing methods of Commands; Commands provides what is declared here."""

    cfg: Config
    store: StateStore
    registry: Registry
    machines: dict[str, Machine]
    policy: RestartPolicy
    after_boot: Callable[[], None]

    def adopt(self, record: VMRecord) -> Machine | None:
        raise NotImplementedError

    def retire_pool(self, record: VMRecord, reason: str) -> None:
        raise NotImplementedError

    def mark_lost(self, record: VMRecord, reason: str) -> None:
        raise NotImplementedError

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
            self.registry.start_job(vm_id, heal, thread)  # registered and started as one step
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
                self.registry.end_job(record.vm_id)
            self.after_boot()
