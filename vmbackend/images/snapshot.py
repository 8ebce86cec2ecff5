"""Saved state of a booted image, so new VMs restore in seconds instead of booting (issue 4).

    <image>/saved/meta.json                       what must match for a restore (see `matching`),
                                                  and the names of the files below
    <image>/saved/state-<id>.zst                  QMP migrate output (zstd), taken while paused
    <image>/saved/disk-<id>.qcow2                 the overlay at that moment (images with a disk)
    <image>/saved/template-admin-<id>.secret      the template admin's password, mode 0600

`create` boots the image cold with template credentials, waits until the management API answers,
stops the VM, raises the migration bandwidth, migrates to `exec:zstd -1 ...`, copies the overlay
and writes meta.json last (a saved/ without it does not exist). Files of an earlier saved state
stay: VMs restored from it have overlays backed by its disk. (meta.json without file names means
the first layout: state.zst, disk.qcow2, template-admin.secret.) A VM restores only when QEMU
version, machine type, memory, vCPUs, accelerator, the image's recipe and the whole device set
(the same devices, fw_cfg names, drive and netdev type) match; otherwise it boots cold.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmbackend import accel as accel_mod
from vmbackend import qemu, qmp
from vmbackend.images import manifest as manifest_mod
from vmbackend.images.manifest import Manifest, write_json_atomic
from vmbackend.qemu import UserNet, VMPaths, VMSpec

SAVED = "saved"
META = "meta.json"
STATE = "state.zst"
DISK = "disk.qcow2"
SECRET_FILE = "template-admin.secret"  # noqa: S105 - a file name
TEMPLATE_ADMIN = "warren-template"
MIGRATE_BANDWIDTH = 10 * 1024**3  # bytes/s: "as fast as the disk takes it"
BOOT_SECONDS = 1500.0  # a 4.0 cold boot took 600+ s under load average ~8 here (docs/images.md)
MIGRATE_SECONDS = 300.0

Progress = Callable[[str], None]


class SnapshotError(Exception):
    """The saved state could not be made."""


@dataclass(frozen=True)
class Saved:
    state: Path
    disk: Path | None
    template_admin: str
    template_secret: Path
    meta: dict


def signature(image: Manifest, spec: VMSpec, accel: str) -> list[str]:
    """The device set a VM of `spec` would have (what must be equal on both sides)."""
    args = qemu.build_args(image, spec, VMPaths(Path("/vm")), accel, tsc_khz=1)
    return qemu.device_signature(args)


def load_meta(image: Manifest) -> dict | None:
    try:
        meta = json.loads((image.saved_dir / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _expected(image: Manifest, spec: VMSpec, accel: str) -> dict:
    """The meta.json fields a saved state must have for a VM of `spec` under `accel`."""
    return {
        "qemu_version": qemu.qemu_version(),
        "machine": qemu.MACHINE,
        "memory_mb": spec.memory_mb,
        "vcpus": spec.vcpus,
        "accel": accel,
        "recipe_hash": image.recipe_hash,
        "signature": signature(image, spec, accel),
    }


def _meta_matches(meta: dict | None, expected: dict) -> bool:
    return meta is not None and all(meta.get(k) == v for k, v in expected.items())


def matching(image: Manifest, spec: VMSpec, accel: str) -> Saved | None:
    """The image's saved state if a VM of `spec` under `accel` can restore from it."""
    meta = load_meta(image)
    if meta is None or not isinstance(spec.network, UserNet):
        return None  # tap VMs boot cold: they would share the template's MAC and DHCP lease
    try:
        expected = _expected(image, spec, accel)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    if not _meta_matches(meta, expected):
        return None
    try:
        state = manifest_mod.resolve_inside(image.saved_dir, meta.get("state", STATE))
        disk = None
        if image.disk is not None:
            disk = manifest_mod.resolve_inside(image.saved_dir, meta.get("disk", DISK))
        secret = manifest_mod.resolve_inside(image.saved_dir, meta.get("template_secret", SECRET_FILE))
    except manifest_mod.ImageError:
        return None
    if not state.is_file() or (disk is not None and not disk.is_file()):
        return None
    return Saved(state=state, disk=disk, template_admin=str(meta.get("template_admin")),
                 template_secret=secret, meta=meta)


def read_secret(path: Path | str | None) -> str | None:
    """A template password file's content (None when it is gone)."""
    try:
        return Path(path).read_text().strip() if path else None
    except OSError:
        return None


def template_password(images_root: Path, name: str) -> str | None:
    """The template admin's password of image `name`'s current saved state."""
    image = manifest_mod.load(images_root, name)
    meta = load_meta(image) or {}
    try:
        path = manifest_mod.resolve_inside(image.saved_dir, meta.get("template_secret", SECRET_FILE))
    except manifest_mod.ImageError:
        return None
    return read_secret(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create(images_root: Path, name: str, progress: Progress = print, *, memory_mb: int = 512,
           vcpus: int = 1, accel: str = "auto", force: bool = False) -> Path:
    """Boot image `name` cold, save its running state into <image>/saved/; returns that folder.

    Does nothing when a matching saved state exists (unless `force`)."""
    images_root = Path(images_root)
    manifest_mod.validate_name(name)
    with open(images_root / f".{name}.snapshot.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one snapshot of an image at a time
        return _create(images_root, name, progress, memory_mb=memory_mb, vcpus=vcpus,
                       accel=accel, force=force)


def _create(images_root: Path, name: str, progress: Progress, *, memory_mb: int, vcpus: int,
            accel: str, force: bool) -> Path:
    from vmbackend.machine import Machine, MachineError  # machine imports this module

    image = manifest_mod.load(images_root, name)
    verdict = accel_mod.choose(accel, kernel=image.kernel)
    password = secrets.token_urlsafe(24)
    spec = VMSpec(
        vm_id=f"snapshot-{uuid.uuid4().hex[:8]}", image=name, memory_mb=memory_mb, vcpus=vcpus,
        disk_gb=1, hostname=f"{name}-template", admin_user=TEMPLATE_ADMIN,
        admin_password=password, network=UserNet("127.0.0.1", _free_port(), _free_port()),
    )
    expected = _expected(image, spec, verdict.accel)
    if not force and matching(image, spec, verdict.accel):
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
    machine = Machine(spec, vm_dir / "vm", images_root, accel=verdict.accel)
    done = False
    try:
        progress(f"{name}: booting cold with the template admin ({verdict.accel})")
        started = time.monotonic()
        machine.launch(allow_restore=False)
        deadline = time.monotonic() + BOOT_SECONDS
        machine.wait_guest_agent(deadline)
        machine.wait_management(machine.management_url(), deadline)
        progress(f"{name}: management API up after {time.monotonic() - started:.1f} s; saving")
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
        write_json_atomic(saved / META, {
            **expected,
            "state": state_file.name,
            "disk": disk_file.name if image.disk is not None else None,
            "template_secret": secret_file.name,
            "template_admin": TEMPLATE_ADMIN,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        })
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
