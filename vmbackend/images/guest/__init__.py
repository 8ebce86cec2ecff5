"""Files both recipes put into the guest: the per-VM settings contract (docs/images.md).

`install(root, ...)` copies them into a root file system; the recipe then enables the units inside
its chroot. The files' contents are part of every recipe's hash (`source_files()`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class GuestFile:
    source: str  # file name in this folder
    dest: str  # absolute path in the guest; "{rabbit_unit}" is replaced by the recipe's unit name
    mode: int = 0o644


FILES: tuple[GuestFile, ...] = (
    GuestFile("warren-firstboot", "/usr/local/sbin/warren-firstboot", 0o755),
    GuestFile("warren-restore-settings", "/usr/local/sbin/warren-restore-settings", 0o755),
    GuestFile("warren-firstboot.service", "/etc/systemd/system/warren-firstboot.service"),
    GuestFile("rabbitmq-warren.conf", "/etc/systemd/system/{rabbit_unit}.d/warren.conf"),
    GuestFile("rabbitmq.conf", "/etc/rabbitmq/rabbitmq.conf"),
    GuestFile("rabbitmq-env.conf", "/etc/rabbitmq/rabbitmq-env.conf"),
    GuestFile("enabled_plugins", "/etc/rabbitmq/enabled_plugins"),
    GuestFile("20-wired.network", "/etc/systemd/network/20-wired.network"),
)

# Only the Arch recipe needs this: Debian's package starts the agent from a udev rule.
QGA_PATH_UNIT = GuestFile("warren-qga.path", "/etc/systemd/system/warren-qga.path")

# TLS listeners from the first start (docs/tls.md), for the recipes that bake them (Debian trixie:
# RabbitMQ 4.0 on OTP 27, where this was measured); the recipe also makes a throw-away server.pem.
TLS_FILES: tuple[GuestFile, ...] = (
    GuestFile("rabbitmq-tls.conf", "/etc/rabbitmq/conf.d/80-warren-tls.conf"),
    GuestFile("advanced.config", "/etc/rabbitmq/advanced.config"),
)

# Units the first-boot machinery adds (enabled by the recipes).
FIRSTBOOT_UNIT = "warren-firstboot.service"


def source_files() -> list[Path]:
    return [GUEST_DIR / f.source for f in (*FILES, QGA_PATH_UNIT, *TLS_FILES)]


def install(root: Path, *, rabbit_unit: str, extra: tuple[GuestFile, ...] = ()) -> list[Path]:
    """Copy the guest files into `root` (owned by root, with their modes). Returns the paths."""
    written = []
    for f in (*FILES, *extra):
        dest = Path(root) / f.dest.format(rabbit_unit=rabbit_unit).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink():
            dest.unlink()
        shutil.copyfile(GUEST_DIR / f.source, dest)
        os.chmod(dest, f.mode)
        if os.geteuid() == 0:
            os.chown(dest, 0, 0)
        written.append(dest)
    return written
