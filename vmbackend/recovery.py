"""Start-up recovery: the state dir after a SIGTERM, a SIGKILL or a host reboot.

Running QEMUs are adopted; a ready VM whose QEMU is gone (a host reboot, a crash while the daemon
was away) is started again from its disk through the restart policy (vmbackend/healing.py), as
is a self-healing that the restart cut off; a half-done boot resumes. A boot whose QEMU died while
the daemon was away fails and is cleaned up — unless the VM was ready once: then it is lost with
its disk kept (only delete-vm removes a customer's disk), and the start-vm that was booting it
(redelivered by the broker) starts it again.
"""

from __future__ import annotations

import logging
import shutil
import time

from vmbackend.boot import cleanup
from vmbackend.commands import Commands
from vmbackend.machine import MachineGone
from vmbackend.state import ACCEPTED, BOOTING, DELETED, FAILED, LOST, READY, STOPPED, VMRecord

log = logging.getLogger(__name__)

QEMU_GONE_WHILE_AWAY = "QEMU exited while the daemon was not running"
QEMU_GONE_AT_START = "QEMU process was gone when the daemon started (host reboot or crash)"


def recover(commands: Commands) -> None:
    """Load the state dir and bring every record to where it can go on."""
    for record in commands.registry.load():
        recover_one(commands, record)


def recover_one(commands: Commands, record: VMRecord) -> None:
    cfg, registry = commands.cfg, commands.registry
    vm_id = record.vm_id
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
        return
    if record.status == BOOTING and machine is None:
        # Boot.fail: a new VM fails and is cleaned up; one that was ready once is lost, disk kept.
        commands.boot(record).fail(MachineGone(QEMU_GONE_WHILE_AWAY))
        return
    # ACCEPTED (maybe launched just before a crash: adopt found it) or BOOTING: resume.
    if machine is None:
        shutil.rmtree(commands.store.vm_dir(vm_id), ignore_errors=True)  # half-made launch
    elif record.status == ACCEPTED:
        registry.report(
            record, None, {}, status=BOOTING, boot_started_at=record.boot_started_at or time.time()
        )
    log.info("boot resumed host_id=%s vm_id=%s adopted=%s", cfg.host_id, vm_id, machine is not None)
    commands.start_boot(record, machine)
