"""Helpers both recipes use on a root file system: chroot commands and the disk image.

Every command that touches the root file system runs inside a private mount namespace
(`unshare -m`), so /proc and /sys mounted for the chroot vanish with the process, even when the
build is killed. This file is part of both recipes' hashes.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmbackend.images.build import Context, Step
from vmbackend.images.runner import run

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}
# Free space on the image's file system beyond its contents (the per-VM overlay may be larger:
# warren-firstboot grows the file system to the disk at first boot).
HEADROOM_BYTES = 1536 * 2**20
MIB = 2**20


def in_namespace(*cmd: str) -> list[str]:
    """`cmd` in a private mount namespace: whatever it mounts disappears when it exits."""
    return ["unshare", "--mount", "--propagation", "private", *cmd]


def chroot(ctx: Context, *cmd: str, summarize: Callable[[str], str | None] | None = None) -> None:
    """Run `cmd` inside ctx.rootfs with /proc and /sys mounted (privately)."""
    script = (
        'set -e; r=$1; shift; mount -t proc proc "$r/proc"; mount -t sysfs sysfs "$r/sys"; '
        'exec chroot "$r" "$@"'
    )
    run(
        in_namespace("sh", "-c", script, "sh", str(ctx.rootfs), *cmd),
        ctx,
        env=CHROOT_ENV,
        summarize=summarize,
    )


def remove_globs(root: Path, patterns: Iterable[str]) -> None:
    """Delete what the glob patterns (relative to `root`) match; symlinks are not followed."""
    for pattern in patterns:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def tree_bytes(path: Path) -> int:
    """Allocated bytes of the files under `path` (not following symlinks)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total


def make_disk(ctx: Context, *, compress: bool) -> None:
    """ctx.rootfs → ext4 (no partition table) in a sparse file → ctx.work/<ctx.disk_name>."""
    used = tree_bytes(ctx.rootfs)
    ctx.facts["rootfs_bytes"] = used
    size = -(-(int(used * 1.1) + HEADROOM_BYTES) // (256 * MIB)) * 256 * MIB  # up to 256 MiB
    ctx.facts["filesystem_bytes"] = size
    raw = ctx.work / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
    ctx.progress(f"  root file system {used / 1e6:.0f} MB in a {size / MIB:.0f} MiB ext4")
    run(
        ["mkfs.ext4", "-q", "-F", "-L", "warren-root", "-m", "1", "-d", str(ctx.rootfs), str(raw)],
        ctx,
    )
    qcow = ctx.work / ctx.disk_name
    cmd = ["qemu-img", "convert", "-O", "qcow2"]
    if compress:
        cmd += ["-c", "-o", "compression_type=zstd"]
    run([*cmd, str(raw), str(qcow)], ctx)
    raw.unlink()
    ctx.progress(f"  {qcow.name} {qcow.stat().st_size / 1e6:.0f} MB")


def kernel_version(root: Path) -> str:
    """The one kernel version installed under root/lib/modules (or usr/lib/modules)."""
    from vmbackend.images.build import BuildError

    kernels = sorted(p.name for p in (root / "usr/lib/modules").iterdir() if p.is_dir())
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in the image, found {kernels}")
    return kernels[0]


# What the RabbitMQ recipes (Debian, Arch) share: direct kernel boot of an ext4 root on /dev/vda.
APPEND = "console=ttyS0 root=/dev/vda rw quiet"
StepRun = Callable[[Context], None]


def rabbitmq_steps(
    install: Step, *, configure: StepRun, initramfs: StepRun, clean: StepRun, make_disk: StepRun
) -> tuple[Step, ...]:
    """A RabbitMQ recipe's steps: the distro's own install step, then the common ones."""
    return (
        install,
        Step("configure the guest (network, units, RabbitMQ, first boot)", configure),
        Step("initramfs with virtio modules; copy kernel and initrd out", initramfs),
        Step("clean caches", clean),
        Step("ext4 file system and qcow2 disk", make_disk),
    )


def rabbitmq_manifest(
    ctx: Context, distro: str, details: dict[str, Any], *, tls_baked: bool = False
) -> dict[str, Any]:
    """image.json fields of a RabbitMQ image; `details` goes under the distro's own key;
    `tls_baked`: the image listens on amqps/https from its first start (docs/tls.md)."""
    guest: dict[str, Any] = {"kind": "rabbitmq", "management_port": 15672, "amqp_port": 5672}
    if tls_baked:
        guest["tls"] = "baked"
    return {
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "disk": ctx.disk_name,
        "append": APPEND,
        "guest": guest,
        "saved_state": None,
        distro: details,
    }


SERVER_PEM = "etc/rabbitmq/tls/server.pem"  # below the root; the guest's TLS key and chain


def write_throwaway_tls(root: Path) -> Path:
    """The image's server.pem for its baked TLS listeners (docs/tls.md): a key and a self-signed
    certificate made for this build only, so RabbitMQ starts them. It never answers a customer:
    the host forwards a VM's 5671/15671 only after writing the VM's own file and seeing it served,
    and a cold-booted VM's first boot deletes it. Mode 0400; the recipe's `chown -R` of
    /etc/rabbitmq gives it to RabbitMQ, and the host later writes the file in place."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Warren throw-away (image build)")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = root / SERVER_PEM
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem + cert.public_bytes(serialization.Encoding.PEM))
    return path
