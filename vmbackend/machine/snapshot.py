"""Creating an image's saved state, so new VMs restore in seconds instead of booting (issue 4).

The layout of <image>/saved/ and the rules for restoring from it are in `vmbackend/machine/saved_state.py`
(the reading side, which `qemu_machine.py` uses); this module boots a QemuMachine, so it sits
above it (and images/ stays below machine/: `python -m vmbackend image snapshot` comes here).

`create` boots the image cold with template credentials, waits until the management API answers,
stops the VM, raises the migration bandwidth, migrates to `exec:zstd -1 ...`, copies the overlay
and writes meta.json last (a saved/ without it does not exist). Each run writes files with their
own names (state-<id>.zst, disk-<id>.qcow2, template-admin-<id>.secret) and meta.json switches to
them; files of an earlier saved state stay: VMs restored from it have overlays backed by its disk.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import secrets
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from vmbackend.files import write_json_atomic
from vmbackend.images import manifest as manifest_mod
from vmbackend.machine import accel as accel_mod
from vmbackend.machine import qemu, qmp, saved_state, tls_ports
from vmbackend.machine.base import MachineError
from vmbackend.machine.qemu import UserNet, VMSpec
from vmbackend.machine.qemu_machine import QemuMachine

TEMPLATE_ADMIN = "warren-template"
MIGRATE_BANDWIDTH = 10 * 1024**3  # bytes/s: "as fast as the disk takes it"
BOOT_SECONDS = 1500.0  # a 4.0 cold boot took 600+ s under load average ~8 here (docs/images.md)
MIGRATE_SECONDS = 300.0

Progress = Callable[[str], None]


class SnapshotError(Exception):
    """The saved state could not be made."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]  # (host, port) for AF_INET
        return port


def create(
    images_root: Path,
    name: str,
    progress: Progress = print,
    *,
    memory_mb: int = 512,
    vcpus: int = 1,
    accel: str = "auto",
    force: bool = False,
) -> Path:
    """Boot image `name` cold, save its running state into <image>/saved/; returns that folder.

    Does nothing when a matching saved state exists (unless `force`)."""
    images_root = Path(images_root)
    manifest_mod.validate_name(name)
    with open(images_root / f".{name}.snapshot.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one snapshot of an image at a time
        return _create(
            images_root, name, progress, memory_mb=memory_mb, vcpus=vcpus, accel=accel, force=force
        )


def _create(
    images_root: Path,
    name: str,
    progress: Progress,
    *,
    memory_mb: int,
    vcpus: int,
    accel: str,
    force: bool,
) -> Path:
    image = manifest_mod.load(images_root, name)
    verdict = accel_mod.choose(accel, kernel=image.kernel)
    password = secrets.token_urlsafe(24)
    spec = VMSpec(
        vm_id=f"snapshot-{uuid.uuid4().hex[:8]}",
        image=name,
        memory_mb=memory_mb,
        vcpus=vcpus,
        disk_gb=1,
        hostname=f"{name}-template",
        admin_user=TEMPLATE_ADMIN,
        admin_password=password,
        network=UserNet("127.0.0.1", _free_port(), _free_port()),
    )
    expected = saved_state.expected_meta(image, spec, verdict.accel)
    if not force and saved_state.matching(image, spec, verdict.accel):
        # Up to date: nothing to do (restored VMs' overlays are backed by the saved disk).
        progress(f"{name}: saved state up to date")
        return image.saved_dir
    # New files get their own names next to the old ones, and meta.json (written last) switches
    # to them: VMs restored earlier keep their backing disk, and a failed run changes nothing.
    saved = image.saved_dir
    saved.mkdir(mode=0o700, exist_ok=True)
    sid = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    state_file, disk_file = saved / f"state-{sid}.zst", saved / f"disk-{sid}.qcow2"
    secret_file = saved / f"template-admin-{sid}.secret"
    vm_dir = Path(tempfile.mkdtemp(prefix="wsnap-"))
    machine = QemuMachine(spec, vm_dir / "vm", images_root, accel=verdict.accel)
    done = False
    try:
        progress(f"{name}: booting cold with the template admin ({verdict.accel})")
        started = time.monotonic()
        machine.launch(allow_restore=False)
        deadline = time.monotonic() + BOOT_SECONDS
        machine.wait_guest_agent(deadline)
        machine.wait_management(machine.management_url(), deadline)
        progress(f"{name}: management API up after {time.monotonic() - started:.1f} s; saving")
        if image.guest.tls_baked:
            # One handshake per TLS listener before the save, so the saved node has loaded the
            # code a handshake needs (the first took 7-11 s under TCG): a restored VM's first
            # handshake is then ~0.2-0.7 s. A wrong TLS setting in the image fails here, loudly.
            for guest_port in tls_ports.GUEST_PORTS:
                warm = time.monotonic()
                tls_ports.served_certificate(machine.paths.qmp, guest_port)
                progress(
                    f"{name}: TLS port {guest_port} warmed up in {time.monotonic() - warm:.1f} s"
                )
        paths = machine.paths
        with qmp.session(paths.qmp, timeout=30) as mon:
            qmp.run(mon, "stop")
            qmp.run(mon, "migrate-set-parameters", **{"max-bandwidth": MIGRATE_BANDWIDTH})
            qmp.run(mon, "migrate", uri=qemu.outgoing_to(state_file))
            end = time.monotonic() + MIGRATE_SECONDS
            while True:
                status = qmp.run(mon, "query-migrate").get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled") or time.monotonic() > end:
                    raise SnapshotError(f"migration {status or 'timed out'}")
                time.sleep(0.1)
        if image.disk is not None:
            shutil.copy2(paths.disk, disk_file)
        machine.kill()
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        write_json_atomic(
            saved / saved_state.META,
            {
                **expected,
                "state": state_file.name,
                "disk": disk_file.name if image.disk is not None else None,
                "template_secret": secret_file.name,
                "template_admin": TEMPLATE_ADMIN,
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        )
        done = True
        progress(f"{name}: saved state {state_file} ({state_file.stat().st_size >> 20} MiB)")
        return saved
    except (MachineError, qmp.QMPFailure, OSError) as exc:
        raise SnapshotError(f"{name}: saving state failed: {exc}") from exc
    finally:
        machine.destroy()
        shutil.rmtree(vm_dir, ignore_errors=True)
        if not done:
            for path in (state_file, disk_file, secret_file):
                path.unlink(missing_ok=True)
