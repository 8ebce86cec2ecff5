"""The customer's console on the host (docs/protocol.md): set-admin-password, resize-vm, and a
restart-vm with a request id, each ending in one outcome event (command_done/command_failed).

`ConsoleCommands` is a part of `Commands` (commands.py), which provides the VM's machine and the
stop/start it builds on.
"""

from __future__ import annotations

import logging
import subprocess
from typing import Any

from vmbackend.host.boot import urls_for
from vmbackend.host.config import Config
from vmbackend.host.registry import Registry
from vmbackend.host.rules import COMMAND_DONE, COMMAND_FAILED, command_plan, resize_refusal
from vmbackend.host.state import READY, StateStore, VMRecord
from vmbackend.machine import qemu
from vmbackend.machine.base import Machine, MachineError
from vmbackend.machine.management_api import ManagementAPI, ManagementAPIError
from vmbackend.machine.qemu import VMPaths
from vmbackend.protocol.messages import (
    ConsoleCommand,
    Rejected,
    ResizeVM,
    SetAdminPassword,
    VMCommand,
)

log = logging.getLogger("vmbackend.host.commands")  # the commands' log, as before the split


class ConsoleCommands:
    """The console methods of Commands; Commands provides what is declared here."""

    cfg: Config
    store: StateStore
    registry: Registry
    machines: dict[str, Machine]

    def machine_for(self, record: VMRecord) -> Machine | None:
        raise NotImplementedError

    def run_vm_command(self, cmd: VMCommand) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self, record: VMRecord, *, kill: bool) -> None:
        raise NotImplementedError

    def start(self, record: VMRecord) -> None:
        raise NotImplementedError

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
