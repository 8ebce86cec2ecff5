"""Start-up recovery: the state dir after a SIGTERM, a SIGKILL or a host reboot.

Running QEMUs are adopted; a ready VM whose QEMU is gone (a host reboot, a crash while the daemon
was away) is started again from its disk through the restart policy (vmbackend/host/healing.py), as
is a self-healing that the restart cut off; a half-done boot resumes. A boot whose QEMU died while
the daemon was away fails and is cleaned up — unless the VM was ready once: then it is lost with
its disk kept (only delete-vm removes a customer's disk), and the start-vm that was booting it
(redelivered by the broker) starts it again.
"""

from __future__ import annotations

import logging
import shutil
import time

from vmbackend.host import baked_tls
from vmbackend.host.boot import cleanup
from vmbackend.host.commands import Commands
from vmbackend.host.state import ACCEPTED, BOOTING, DELETED, FAILED, LOST, READY, STOPPED, VMRecord
from vmbackend.machine.base import MachineGone

log = logging.getLogger(__name__)

QEMU_GONE_WHILE_AWAY = "QEMU exited while the daemon was not running"
QEMU_GONE_AT_START = "QEMU process was gone when the daemon started (host reboot or crash)"


def recover(commands: Commands) -> None:
    """Load the state dir and bring every record to where it can go on."""
    commands.registry.load()
    for vm_id in commands.registry.drop_claimed_pool():
        # A claim cut off between its two writes: the pool VM is the claiming VM's already.
        log.info("pool claim completed host_id=%s pool_vm_id=%s", commands.cfg.host_id, vm_id)
    for record in list(commands.registry.records.values()):
        recover_one(commands, record)


def recover_pool_vm(commands: Commands, record: VMRecord) -> None:
    """A pool VM stays only if it was ready and its QEMU still runs; any other is replaced."""
    machine = commands.adopt(record) if record.status == READY else None
    if machine is not None:
        log.info("pool vm adopted host_id=%s vm_id=%s", commands.cfg.host_id, record.vm_id)
        baked_tls.recheck(commands.cfg, record, machine)
        return
    commands.retire_pool(record, f"found {record.status} at start")


def recover_one(commands: Commands, record: VMRecord) -> None:
    cfg, registry = commands.cfg, commands.registry
    vm_id = record.vm_id
    if record.pool:
        recover_pool_vm(commands, record)
        return
    if record.claimed_from and not record.ever_ready and record.status in (ACCEPTED, BOOTING):
        # A claim cut off by the restart: finish it on the pool VM's QEMU (the admin swap is
        # idempotent), or boot the ordinary way when that QEMU is gone.
        log.info("pool claim resumed host_id=%s vm_id=%s", cfg.host_id, vm_id)
        commands.start_claim(record, commands.adopt(record), resumed=True)
        return
    if record.status == DELETED:
        cleanup(cfg, commands.store, record, None)
        return
    if record.status in (FAILED, LOST, STOPPED):
        return
    if record.healing and record.status == BOOTING:
        # A heal cut off by the restart: go on (resuming its QEMU if it still runs).
        commands.heal(record, record.reason or QEMU_GONE_WHILE_AWAY, recovering=True)
        return
    machine = commands.adopt(record)
    if record.status == READY:
        if machine is None:
            commands.heal(record, QEMU_GONE_AT_START, recovering=True)
        else:
            log.info("vm adopted host_id=%s vm_id=%s pid=%s", cfg.host_id, vm_id, machine.pid)
            baked_tls.recheck(cfg, record, machine)
        return
    if record.status == BOOTING and machine is None:
        # Boot.fail: a new VM fails and is cleaned up; one that was ready once is lost, disk kept.
        commands.boot(record).fail(MachineGone(QEMU_GONE_WHILE_AWAY))
        return
    # ACCEPTED (maybe launched just before a crash: adopt found it) or BOOTING: resume.
    if machine is None:
        shutil.rmtree(commands.store.vm_dir(record.machine_name), ignore_errors=True)  # half-made
    elif record.status == ACCEPTED:
        registry.report(
            record, None, {}, status=BOOTING, boot_started_at=record.boot_started_at or time.time()
        )
    log.info("boot resumed host_id=%s vm_id=%s adopted=%s", cfg.host_id, vm_id, machine is not None)
    commands.start_boot(record, machine)
