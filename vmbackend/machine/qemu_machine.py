"""One VM: a QEMU process and its files in its own folder (the Machine API, docs/machine-api.md).

Modelled on QEMU's python/qemu/machine: explicit pre-launch / launch / post-launch steps, Popen
with an argument list (no shell), stdin from /dev/null, output to qemu.log, the command line
logged at debug, shutdown escalating from ACPI to SIGKILL, and one root error type (MachineError)
whose message carries the context (exit code, log tails). QEMU runs in its own session so it
outlives the daemon; `adopt` reattaches through the pidfile.
Over 400 lines as one class on purpose: it is the life of one VM in order, as QEMUMachine is; what
is not (the command line, saved state, personalizing, the management API) lives in its own module.

Folder layout (vm_dir, also QEMU's working directory, mode 0700):
    disk.qcow2  qmp.sock  qga.sock  qemu.pid  qemu.log  console.log  machine.json
    fw_cfg/{hostname,admin_user,admin_password,erlang_cookie}   (mode 0600)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmbackend import accel as accel_mod
from vmbackend import personalize, qemu, qmp, saved_state
from vmbackend.files import write_atomic, write_json_atomic
from vmbackend.guest_agent import GuestAgent, GuestAgentError
from vmbackend.images import manifest as manifest_mod
from vmbackend.management_api import ManagementAPI, ManagementAPIError
from vmbackend.qemu import TapNet, UserNet, VMPaths, VMSpec

__all__ = ["Machine", "MachineError", "MachineGone", "TapNet", "UserNet", "VMSpec"]

log = logging.getLogger(__name__)

STATE_FILE = "machine.json"
LAUNCH_SECONDS = 60.0  # QEMU up and answering QMP (restore: the incoming state loaded)


class MachineError(Exception):
    """Something about a VM failed; the message says what, with context."""


class MachineGone(MachineError):
    """The VM's QEMU process is not running."""


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)"
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-1500:] or "(empty)"


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


class Machine:
    """One QEMU process and its files in vm_dir."""

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
        return f"Machine(vm_id={self.spec.vm_id!r}, pid={self.pid}, dir={str(self.vm_dir)!r})"

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
                raise MachineError(
                    f"restore failed: VM is {status!r}; log: {_tail(self.paths.log)}"
                )
            last = "loading the saved state"
            time.sleep(0.05)
        raise MachineError(
            f"QEMU not ready within {LAUNCH_SECONDS:.0f} s ({last}); log: {_tail(self.paths.log)}"
        )

    # -- adopt / liveness -----------------------------------------------------------------------
    @classmethod
    def adopt(cls, spec: VMSpec, vm_dir: Path, image_dir: Path, accel: str = "auto") -> Machine:
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
            f"QEMU exited while {doing} (exit code {code}); qemu.log: {_tail(self.paths.log)}; "
            f"console: {_tail(self.paths.console)}"
        )

    def run_state(self) -> str:
        self._check_alive("asking its state")
        try:
            return qmp.run_state(self.paths.qmp)
        except qmp.QMPFailure as exc:
            raise MachineError(str(exc)) from exc

    # -- guest agent ----------------------------------------------------------------------------
    def agent(self) -> GuestAgent:
        if self._agent is None:
            self._agent = GuestAgent(self.paths.qga)
        return self._agent

    def wait_guest_agent(self, deadline: float) -> None:
        """Until the guest agent answers; MachineError at `deadline` (a time.monotonic() value)."""
        started = time.monotonic()
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive("waiting for the guest agent")
            try:
                budget = max(0.1, min(3.0, deadline - time.monotonic()))
                self.agent().sync(budget)
                self.agent().ping(budget)
                return
            except GuestAgentError as exc:
                last = exc
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        raise MachineError(
            f"guest agent did not answer within {time.monotonic() - started:.0f} s ({last}); "
            f"console: {_tail(self.paths.console)}"
        )

    def guest_addresses(self, wait: float = 15.0) -> list[str]:
        """The guest's routable addresses (loopback and link-local filtered), waiting up to
        `wait` seconds for DHCP to give one."""
        deadline = time.monotonic() + wait
        while True:
            self._check_alive("reading guest addresses")
            try:
                found = self.agent().addresses(timeout=5)
            except GuestAgentError as exc:
                raise MachineError(f"cannot read guest addresses: {exc}") from exc
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.25)

    def guest_exec(
        self,
        path: str,
        args: list[str] | None = None,
        *,
        input_data: bytes | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """Run a program in the guest; (exit code, stdout)."""
        try:
            result = self.agent().exec(path, args or [], input_data=input_data, timeout=timeout)
        except GuestAgentError as exc:
            raise MachineError(f"guest-exec {path}: {exc}") from exc
        return result.exitcode, result.stdout

    # -- management API -------------------------------------------------------------------------
    def management_url(self) -> str:
        """The base URL (ending in /) where the host reaches the guest's management API."""
        net = self.spec.network
        if isinstance(net, UserNet):
            host = net.management_bind
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{net.management_port}/"
        addresses = self.guest_addresses()
        if not addresses:
            raise MachineError("the guest has no address yet")
        host = addresses[0] if ":" not in addresses[0] else f"[{addresses[0]}]"
        return f"http://{host}:{self._image_guest().management_port}/"

    def speaks_tls(self) -> bool:
        """Whether the image runs RabbitMQ (its TLS listeners, vmbackend/guest_tls.py); the tiny
        test image does not."""
        return self._image_guest().kind == "rabbitmq"

    def _image_guest(self) -> manifest_mod.Guest:
        return self._pre_launch_image().guest

    def _api(self, base_url: str) -> ManagementAPI:
        """The management API at `base_url` as this VM's own admin."""
        return ManagementAPI(base_url, self.spec.admin_user, self.spec.admin_password)

    def wait_management(self, base_url: str, deadline: float) -> None:
        """Until GET {base_url}api/overview answers 200 with the VM's own credentials."""
        try:
            self._api(base_url).wait_until_ok(
                "api/overview",
                deadline,
                check=lambda: self._check_alive("waiting for the management API"),
            )
        except ManagementAPIError as exc:
            raise MachineError(
                f"the management API did not answer: {exc}; console: {_tail(self.paths.console)}"
            ) from exc

    def runtime(self, base_url: str, timeout: float = 5.0) -> dict[str, str]:
        """RabbitMQ/Erlang versions and node name from the management API; {} when unreadable
        (instance.ready then goes without them)."""
        try:
            api = ManagementAPI(
                base_url, self.spec.admin_user, self.spec.admin_password, timeout=timeout
            )
            return api.runtime()
        except (ManagementAPIError, ValueError) as exc:
            log.info("runtime not read vm_id=%s error=%s", self.spec.vm_id, exc)
            return {}

    def set_admin_password(self, password: str) -> None:
        """From now on the VM's admin password is `password` (its own management API already
        has it): the spec every later call uses, and the fw_cfg file the next start reads."""
        self.spec = dataclasses.replace(self.spec, admin_password=password)
        secret = self.paths.fw_cfg_dir / "admin_password"
        if secret.parent.is_dir():
            write_atomic(secret, password.encode(), mode=0o600)

    def hand_over(self, admin_user: str, admin_password: str, limits: dict[str, int]) -> None:
        """A claimed pool VM is the order's now (vmbackend/pool.py): its admin and limits in the
        spec every later call uses, and the admin in the fw_cfg files the next start reads."""
        self.spec = dataclasses.replace(
            self.spec, admin_user=admin_user, admin_password=admin_password, limits=dict(limits)
        )
        for key, value in (("admin_user", admin_user), ("admin_password", admin_password)):
            path = self.paths.fw_cfg_dir / key
            if path.parent.is_dir():
                write_atomic(path, value.encode(), mode=0o600)

    def has_disk(self) -> bool:
        return self._pre_launch_image().disk is not None

    def grow_running_disk(self, disk_gb: int) -> None:
        """Grow the running VM's disk to `disk_gb` (QMP block_resize: the guest is told), then
        its root file system (`grow_root`). Images without a disk: no-op."""
        if not self.has_disk():
            return
        try:
            qmp.command(
                self.paths.qmp, "block_resize", timeout=10, device="disk0", size=disk_gb * 1024**3
            )
        except (qmp.QMPFailure, OSError, ValueError) as exc:
            raise MachineError(f"cannot grow the disk to {disk_gb} GB: {exc}") from exc
        self.grow_root()

    def grow_root(self, timeout: float = 120.0) -> None:
        """Grow the guest's root file system to its (grown) disk, through the image's
        restore-settings script (`--grow-root`: resize2fs online). Images without a disk: no-op."""
        if self._pre_launch_image().disk is None:
            return
        code, _out = self.guest_exec(personalize.RESTORE_SETTINGS, ["--grow-root"], timeout=timeout)
        if code != 0:
            raise MachineError(f"{personalize.RESTORE_SETTINGS} --grow-root exited {code}")

    def apply_limits(self, base_url: str) -> None:
        """The spec's vhost limits ({"max-connections": n, ...}) on "/" via the management API."""
        api = self._api(base_url)
        for name, value in sorted(self.spec.limits.items()):
            try:
                api.set_vhost_limit(name, value)
            except ManagementAPIError as exc:
                raise MachineError(f"vhost limit {name}: {exc}") from exc

    # -- restore personalization ----------------------------------------------------------------
    def personalize(self, deadline: float, before_cookie: Callable[[], None] | None = None) -> None:
        """After a restore: the guest's clock, hostname, a fresh Erlang cookie, and the VM's own
        admin in place of the template's (vmbackend/personalize.py). After a cold boot fw_cfg
        did it all: a no-op."""
        state = self._state()
        if state.get("boot") != "restore" or state.get("personalized"):
            return
        self._check_alive("personalizing")
        try:
            personalize.run(
                self.agent(),
                self.spec,
                self.management_url,
                template_admin=state.get("template_admin"),
                template_password=saved_state.read_secret(state.get("template_secret")),
                deadline=deadline,
                check=self._check_alive,
                before_cookie=before_cookie,
            )
        except personalize.PersonalizeError as exc:
            raise MachineError(f"personalize: {exc}; console: {_tail(self.paths.console)}") from exc
        self._save_state(personalized=True)
        log.info("vm personalized vm_id=%s", self.spec.vm_id)

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
