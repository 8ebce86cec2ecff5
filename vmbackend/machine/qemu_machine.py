"""One VM: a QEMU process and its files in its own folder (the Machine API, docs/machine-api.md).

Modelled on QEMU's python/qemu/machine: explicit pre-launch / launch / post-launch steps, Popen
with an argument list (no shell), stdin from /dev/null, output to qemu.log, the command line
logged at debug, shutdown escalating from ACPI to SIGKILL, and one root error type (MachineError)
whose message carries the context (exit code, log tails). QEMU runs in its own session so it
outlives the daemon; `adopt` reattaches through the pidfile.
This module is the life of the QEMU process in order (launch, adopt, stop), as QEMUMachine is; what
the host asks of the guest inside it (guest agent, management API, personalizing, resizing) is
`GuestSide` (guest_side.py), and the command line, saved state and personalization steps live in
their own modules.

Folder layout (vm_dir, also QEMU's working directory, mode 0700):
    disk.qcow2  qmp.sock  qga.sock  qemu.pid  qemu.log  console.log  machine.json
    fw_cfg/{hostname,admin_user,admin_password,erlang_cookie}   (mode 0600)
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from vmbackend.files import write_json_atomic
from vmbackend.images import manifest as manifest_mod
from vmbackend.machine import accel as accel_mod
from vmbackend.machine import personalize, qemu, qmp, saved_state, tls_ports
from vmbackend.machine.base import MachineError, MachineGone
from vmbackend.machine.guest_agent import GuestAgent
from vmbackend.machine.guest_side import GuestSide, tail
from vmbackend.machine.qemu import VMPaths, VMSpec

log = logging.getLogger(__name__)

STATE_FILE = "machine.json"
LAUNCH_SECONDS = 60.0  # QEMU up and answering QMP (restore: the incoming state loaded)


def _pid_is_our_qemu(pid: int, vm_id: str) -> bool:
    """Whether `pid` is alive and is the QEMU of `vm_id` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return f"warren-{vm_id},process=warren-{vm_id}".encode() in cmdline


class QemuMachine(GuestSide):
    """One QEMU process and its files in vm_dir (a `Machine`, vmbackend/machine/base.py)."""

    def __init__(self, spec: VMSpec, vm_dir: Path, image_dir: Path, accel: str = "auto") -> None:
        self.spec = spec
        self.vm_dir = Path(vm_dir)
        self.images_root = Path(image_dir)
        self.paths = VMPaths(self.vm_dir)
        self.accel_request = accel
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._agent: GuestAgent | None = None

    def __repr__(self) -> str:
        return f"QemuMachine(vm_id={self.spec.vm_id!r}, pid={self.pid}, dir={str(self.vm_dir)!r})"

    # -- state kept in the VM's folder ----------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.vm_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self, **changes: Any) -> None:
        write_json_atomic(self.vm_dir / STATE_FILE, {**self._state(), **changes}, mode=0o600)

    @property
    def boot(self) -> str | None:
        """ "cold" or "restore": how the running QEMU was started."""
        return self._state().get("boot")

    # -- launch ---------------------------------------------------------------------------------
    def launch(self, *, allow_restore: bool = True) -> str:
        """Create the VM's overlay and start QEMU; restore from the image's saved state when it
        matches (and `allow_restore`), else boot cold. Returns "restore" or "cold"."""
        return self._launch(fresh=True, allow_restore=allow_restore)

    def start(self) -> str:
        """Boot a stopped VM again from its existing overlay (always cold). Returns "cold"."""
        return self._launch(fresh=False, allow_restore=False)

    def _launch(self, *, fresh: bool, allow_restore: bool) -> str:
        if self.is_running():
            raise MachineError(f"vm {self.spec.vm_id} is already running (pid {self.pid})")
        image = self._pre_launch_image()
        verdict = accel_mod.choose(self.accel_request, kernel=image.kernel)
        saved = saved_state.matching(image, self.spec, verdict.accel) if allow_restore else None
        self.vm_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.vm_dir, 0o700)
        self._write_fw_cfg()
        if image.disk is not None and (fresh or not self.paths.disk.exists()):
            base = saved.disk if saved is not None and saved.disk is not None else image.disk
            self.paths.disk.unlink(missing_ok=True)
            try:
                # A restored guest already knows its disk's size: grow it after `cont` instead
                # (block_resize), so the guest is told and can grow its file system.
                qemu.create_overlay(base, self.paths.disk, None if saved else self.spec.disk_gb)
            except (subprocess.SubprocessError, OSError) as exc:
                raise MachineError(f"cannot create the disk overlay: {exc}") from exc
        for stale in (self.paths.qmp, self.paths.qga, self.paths.pidfile):
            stale.unlink(missing_ok=True)
        boot = "restore" if saved is not None else "cold"
        args = qemu.build_args(
            image,
            self.spec,
            self.paths,
            verdict.accel,
            tsc_khz=qemu.host_tsc_khz() if verdict.accel == "tcg" else None,
            incoming=qemu.incoming_from(saved.state) if saved is not None else None,
        )
        self._save_state(
            boot=boot,
            accel=verdict.accel,
            personalized=boot == "cold",
            template_admin=saved.template_admin if saved else None,
            template_secret=str(saved.template_secret) if saved else None,
            started_at=time.time(),
        )
        self._spawn(args)
        try:
            self._post_launch(restore=saved is not None)
            if saved is not None and image.disk is not None and fresh:
                self._grow_restored_disk(base)
        except BaseException:
            self.kill()
            raise
        log.info(
            "vm started vm_id=%s pid=%s boot=%s accel=%s (%s)",
            self.spec.vm_id,
            self.pid,
            boot,
            verdict.accel,
            verdict.reason,
        )
        return boot

    def _grow_restored_disk(self, base: Path) -> None:
        """Give a restored VM the disk size it was sold: the saved guest still has the template's
        size, and only a live resize tells its kernel (the image's restore-settings script then
        grows the file system)."""
        wanted = self.spec.disk_gb * 1024**3
        try:
            # The overlay is in use by QEMU now (qemu-img would hit its lock): ask the base.
            if qemu.base_virtual_size(base) >= wanted:
                return
            qmp.command(self.paths.qmp, "block_resize", timeout=10, device="disk0", size=wanted)
        except (qmp.QMPFailure, subprocess.SubprocessError, OSError, ValueError) as exc:
            raise MachineError(
                f"cannot grow the restored disk to {self.spec.disk_gb} GB: {exc}"
            ) from exc

    def _pre_launch_image(self) -> manifest_mod.Manifest:
        try:
            return manifest_mod.load(self.images_root, self.spec.image)
        except manifest_mod.ImageError as exc:
            raise MachineError(str(exc)) from exc

    def _write_fw_cfg(self) -> None:
        folder = self.paths.fw_cfg_dir
        folder.mkdir(mode=0o700, exist_ok=True)
        values = {
            "hostname": self.spec.hostname,
            "admin_user": self.spec.admin_user,
            "admin_password": self.spec.admin_password,
            "erlang_cookie": personalize.erlang_cookie(),
        }
        for key in qemu.FW_CFG_KEYS:
            path = folder / key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(values[key])
            os.chmod(path, 0o600)

    def _spawn(self, args: list[str]) -> None:
        log.debug(
            "vm command vm_id=%s cwd=%s cmd=%s", self.spec.vm_id, self.vm_dir, shlex.join(args)
        )
        with open(self.paths.log, "ab") as out:
            try:
                self._proc = subprocess.Popen(
                    args,
                    cwd=self.vm_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise MachineError(f"cannot start {args[0]}: {exc}") from exc
        self.pid = self._proc.pid

    def _post_launch(self, *, restore: bool) -> None:
        """Wait until QMP answers (and, for a restore, the state is loaded; then `cont`)."""
        deadline = time.monotonic() + LAUNCH_SECONDS
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_alive("starting")
            try:
                status = qmp.run_state(self.paths.qmp, timeout=2)
            except qmp.QMPFailure as exc:
                last = str(exc)
                time.sleep(0.05)
                continue
            if not restore:
                return
            if status == "paused":
                qmp.command(self.paths.qmp, "cont", timeout=5)
                return
            if status == "running":
                return
            if status != "inmigrate":
                raise MachineError(f"restore failed: VM is {status!r}; log: {tail(self.paths.log)}")
            last = "loading the saved state"
            time.sleep(0.05)
        raise MachineError(
            f"QEMU not ready within {LAUNCH_SECONDS:.0f} s ({last}); log: {tail(self.paths.log)}"
        )

    # -- adopt / liveness -----------------------------------------------------------------------
    @classmethod
    def adopt(cls, spec: VMSpec, vm_dir: Path, image_dir: Path, accel: str = "auto") -> QemuMachine:
        """Reattach to a running VM after a daemon restart; MachineGone when it is not running."""
        machine = cls(spec, vm_dir, image_dir, accel)
        try:
            pid = int(machine.paths.pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            raise MachineGone(f"vm {spec.vm_id}: no pidfile") from exc
        if not _pid_is_our_qemu(pid, spec.vm_id):
            raise MachineGone(f"vm {spec.vm_id}: QEMU (pid {pid}) is not running")
        machine.pid = pid
        return machine

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _pid_is_our_qemu(self.pid, self.spec.vm_id)

    def _check_alive(self, doing: str) -> None:
        if self.is_running():
            return
        code = self._proc.returncode if self._proc is not None else None
        raise MachineGone(
            f"QEMU exited while {doing} (exit code {code}); qemu.log: {tail(self.paths.log)}; "
            f"console: {tail(self.paths.console)}"
        )

    def run_state(self) -> str:
        self._check_alive("asking its state")
        try:
            return qmp.run_state(self.paths.qmp)
        except qmp.QMPFailure as exc:
            raise MachineError(str(exc)) from exc

    def open_tls_ports(self, cert_der: bytes) -> None:
        """Forward the VM's public TLS ports once its guest serves `cert_der` (tls_ports.py)."""
        self._check_alive("opening its TLS ports")
        if not isinstance(self.spec.network, qemu.UserNet):
            raise MachineError("TLS ports are forwarded in user-mode networking only")
        tls_ports.open_tls_ports(self.paths.qmp, self.spec.network, cert_der)

    # -- stop -----------------------------------------------------------------------------------
    def powerdown(self, timeout: float = 30) -> None:
        """ACPI power button through QMP; SIGKILL when the guest has not stopped after `timeout`."""
        if not self.is_running():
            self._after_stop()
            return
        try:
            qmp.command(self.paths.qmp, "system_powerdown", timeout=5)
        except qmp.QMPFailure as exc:
            log.warning(
                "vm powerdown via QMP failed vm_id=%s error=%s; killing", self.spec.vm_id, exc
            )
            self.kill()
            return
        if self._wait_exit(timeout):
            log.info("vm powered down vm_id=%s", self.spec.vm_id)
            self._after_stop()
            return
        log.warning("vm did not power down in %.0f s vm_id=%s; killing", timeout, self.spec.vm_id)
        self.kill()

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                return True
            time.sleep(0.1)
        return not self.is_running()

    def kill(self) -> None:
        """SIGKILL the VM's QEMU (only if it really is this VM's QEMU) and wait for it to go."""
        if self._proc is None and self.pid is None:
            try:  # a fresh object for a VM started by an earlier one (or an earlier daemon)
                self.pid = int(self.paths.pidfile.read_text().strip())
            except (OSError, ValueError):
                pass
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired as exc:
                raise MachineError(f"QEMU pid {self.pid} did not die after SIGKILL") from exc
        elif self.pid is not None and _pid_is_our_qemu(self.pid, self.spec.vm_id):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if not self._wait_exit(10):
                raise MachineError(f"QEMU pid {self.pid} did not die after SIGKILL")
        self._after_stop()

    def _after_stop(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        for path in (self.paths.qmp, self.paths.qga, self.paths.pidfile):
            path.unlink(missing_ok=True)

    def destroy(self) -> None:
        """Kill the VM if running and remove its folder entirely."""
        self.kill()
        shutil.rmtree(self.vm_dir, ignore_errors=True)
        log.info("vm destroyed vm_id=%s", self.spec.vm_id)
