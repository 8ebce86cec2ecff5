"""Reading an image's saved state: whether a VM can restore from it, and from which files.

The saved state of a booted image lets new VMs restore in seconds instead of booting (issue 4).
It is written by `vmbackend/machine/snapshot.py` (which boots a Machine); this module only reads
it, so `machine.py` can use it without importing the module that imports Machine.

    <image>/saved/meta.json                       what must match for a restore (see `matching`),
                                                  and the names of the files below
    <image>/saved/state-<id>.zst                  QMP migrate output (zstd), taken while paused
    <image>/saved/disk-<id>.qcow2                 the overlay at that moment (images with a disk)
    <image>/saved/template-admin-<id>.secret      the template admin's password, mode 0600

meta.json without file names means the first layout: state.zst, disk.qcow2,
template-admin.secret. A VM restores only when QEMU version, machine type, memory, vCPUs,
accelerator, the image's recipe and the whole device set (the same devices, fw_cfg names, drive
and netdev type) match, and it is on user-mode networking; otherwise it boots cold.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbackend.images import manifest as manifest_mod
from vmbackend.images.manifest import Manifest
from vmbackend.machine import qemu
from vmbackend.machine.qemu import UserNet, VMPaths, VMSpec

META = "meta.json"
# The first layout's fixed names: the defaults when meta.json does not name its files.
STATE = "state.zst"
DISK = "disk.qcow2"
SECRET_FILE = "template-admin.secret"  # noqa: S105 - a file name


@dataclass(frozen=True)
class Saved:
    state: Path
    disk: Path | None
    template_admin: str
    template_secret: Path
    meta: dict[str, Any]


def signature(image: Manifest, spec: VMSpec, accel: str) -> list[str]:
    """The device set a VM of `spec` would have (what must be equal on both sides)."""
    args = qemu.build_args(image, spec, VMPaths(Path("/vm")), accel, tsc_khz=1)
    return qemu.device_signature(args)


def load_meta(image: Manifest) -> dict[str, Any] | None:
    """The image's saved/meta.json, or None when there is none (or it is unreadable)."""
    try:
        meta = json.loads((image.saved_dir / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def expected_meta(image: Manifest, spec: VMSpec, accel: str) -> dict[str, Any]:
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


def _meta_matches(meta: dict[str, Any] | None, expected: dict[str, Any]) -> bool:
    return meta is not None and all(meta.get(k) == v for k, v in expected.items())


def matching(image: Manifest, spec: VMSpec, accel: str) -> Saved | None:
    """The image's saved state if a VM of `spec` under `accel` can restore from it."""
    meta = load_meta(image)
    if meta is None or not isinstance(spec.network, UserNet):
        return None  # tap VMs boot cold: they would share the template's MAC and DHCP lease
    try:
        expected = expected_meta(image, spec, accel)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    if not _meta_matches(meta, expected):
        return None
    try:
        state = manifest_mod.resolve_inside(image.saved_dir, meta.get("state", STATE))
        disk = None
        if image.disk is not None:
            disk = manifest_mod.resolve_inside(image.saved_dir, meta.get("disk", DISK))
        secret = manifest_mod.resolve_inside(
            image.saved_dir, meta.get("template_secret", SECRET_FILE)
        )
    except manifest_mod.ImageError:
        return None
    if not state.is_file() or (disk is not None and not disk.is_file()):
        return None
    return Saved(
        state=state,
        disk=disk,
        template_admin=str(meta.get("template_admin")),
        template_secret=secret,
        meta=meta,
    )


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
        path = manifest_mod.resolve_inside(
            image.saved_dir, meta.get("template_secret", SECRET_FILE)
        )
    except manifest_mod.ImageError:
        return None
    return read_secret(path)
