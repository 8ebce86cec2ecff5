"""What the host asks of the guest inside a QEMU VM: guest agent, management API, admin, resizing.

`GuestSide` is the half of `QemuMachine` (qemu_machine.py) that talks to the running guest; the
other half starts, adopts and stops its QEMU process. It reaches the guest through the guest
agent's socket and the management API's URL, and the process only through `_check_alive`.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmbackend.files import write_atomic
from vmbackend.images import manifest as manifest_mod
from vmbackend.machine import personalize, qmp, saved_state
from vmbackend.machine.base import MachineError
from vmbackend.machine.guest_agent import GuestAgent, GuestAgentError
from vmbackend.machine.management_api import ManagementAPI, ManagementAPIError
from vmbackend.machine.qemu import UserNet, VMPaths, VMSpec

log = logging.getLogger("vmbackend.machine.qemu_machine")  # one logger for the VM's whole life


def tail(path: Path, lines: int = 8) -> str:
    """The last non-empty lines of a log, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)"
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-1500:] or "(empty)"


class GuestSide:
    """The guest-facing methods of a QemuMachine; the process side provides what is declared here."""

    spec: VMSpec
    paths: VMPaths
    _agent: GuestAgent | None

    def _check_alive(self, doing: str) -> None:
        raise NotImplementedError

    def _pre_launch_image(self) -> manifest_mod.Manifest:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _save_state(self, **changes: Any) -> None:
        raise NotImplementedError

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
            f"console: {tail(self.paths.console)}"
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

    def write_guest_file(self, path: str, data: bytes) -> None:
        """Write `data` over the guest's existing file `path` in place, with three guest-agent
        calls and no program started in the guest (~0.3 s under TCG, where a guest-exec costs
        about a second). The file keeps its owner and mode (qemu-ga runs as root); a missing one
        is made root-owned, mode 0600. Not atomic: a reader may see it half written."""
        agent = self.agent()
        try:
            handle = agent.execute("guest-file-open", {"path": path, "mode": "w"})
            try:
                done = agent.execute(
                    "guest-file-write",
                    {"handle": handle, "buf-b64": base64.b64encode(data).decode()},
                )
            finally:
                agent.execute("guest-file-close", {"handle": handle})
        except GuestAgentError as exc:
            raise MachineError(f"writing {path} in the guest: {exc}") from exc
        if not isinstance(done, dict) or done.get("count") != len(data):
            raise MachineError(f"writing {path} in the guest: short write {done!r}")

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
        """Whether the image runs RabbitMQ (its TLS listeners, vmbackend/tls/guest_install.py); the tiny
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
                f"the management API did not answer: {exc}; console: {tail(self.paths.console)}"
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
        """A claimed pool VM is the order's now (vmbackend/host/pool.py): its admin and limits in the
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
        admin in place of the template's (vmbackend/machine/personalize.py). After a cold boot fw_cfg
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
            raise MachineError(f"personalize: {exc}; console: {tail(self.paths.console)}") from exc
        self._save_state(personalized=True)
        log.info("vm personalized vm_id=%s", self.spec.vm_id)
