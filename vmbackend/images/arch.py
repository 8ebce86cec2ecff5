"""The Arch Linux RabbitMQ image: pacstrap, the same guest contract as the Debian recipe.

Needs an Arch mirror (WARREN_ARCH_MIRROR, pacman's `Server` syntax with `$repo`/`$arch`) and, on
the build host, pacstrap (arch-install-scripts), pacman and archlinux-keyring. No Arch mirror is
reachable from the development machines, so preflight() fails quickly and clearly there, before
any folder is created; the generated files are linted by tests/vmbackend/images/test_arch_recipe.py.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmbackend.images import guest, rootfs
from vmbackend.images.build import BuildError, Context, Progress, Recipe, Step
from vmbackend.images.rootfs import chroot
from vmbackend.images.runner import run, which

PACKAGES: tuple[str, ...] = ("base", "linux", "rabbitmq", "qemu-guest-agent")
MIRROR_ENV = "WARREN_ARCH_MIRROR"
MIRROR_EXAMPLE = "https://geo.mirror.pkgbuild.com/$repo/os/$arch"
MIRROR_CHECK_TIMEOUT = 5.0
ARCH = "x86_64"
RABBIT_UNIT = "rabbitmq.service"
INITRD_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_mmio", "virtio_blk", "ext4")
ENABLE_UNITS: tuple[str, ...] = (
    "systemd-networkd.service",
    RABBIT_UNIT,
    guest.FIRSTBOOT_UNIT,
    "warren-qga.path",
)
MASK_UNITS: tuple[str, ...] = (
    "systemd-networkd-wait-online.service",
    "getty.target",
    "serial-getty@ttyS0.service",
)
DISABLE_TIMERS: tuple[str, ...] = (
    "shadow.timer",
    "man-db.timer",
    "archlinux-keyring-wkd-sync.timer",
)
APPEND = rootfs.APPEND
HOSTNAME = "rabbitmq"
COMPRESS = True
PACMAN_CONF = """\
# Written by vmbackend/images/arch.py for one pacstrap run.
[options]
Architecture = {arch}
SigLevel = Required DatabaseOptional
ParallelDownloads = 4

[core]
Server = {mirror}

[extra]
Server = {mirror}
"""
MKINITCPIO_CONF = """\
# Warren: direct kernel boot from /dev/vda (virtio-blk on microvm or q35), nothing else.
MODULES=({modules})
BINARIES=()
FILES=()
HOOKS=(base udev modconf)
COMPRESSION="zstd"
"""


def arch_mirror() -> str:
    """WARREN_ARCH_MIRROR, or BuildError saying how to set one."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        raise BuildError(
            f"no Arch mirror configured/reachable: set {MIRROR_ENV} to a pacman Server URL, "
            f"e.g. {MIRROR_EXAMPLE} (no Arch mirror is reachable from the development machines; "
            "use --distro debian there)"
        )
    if urllib.parse.urlsplit(mirror).scheme not in ("http", "https"):
        raise BuildError(f"{MIRROR_ENV} must be an http(s) URL, got {mirror!r}")
    return mirror.rstrip("/")


def mirror_url(mirror: str, repo: str) -> str:
    return mirror.replace("$repo", repo).replace("$arch", ARCH)


def check_mirror(mirror: str, timeout: float = MIRROR_CHECK_TIMEOUT) -> None:
    """One HEAD request for core.db; BuildError when the mirror does not answer with it."""
    url = mirror_url(mirror, "core") + "/core.db"
    request = urllib.request.Request(url, method="HEAD")  # noqa: S310 (scheme checked above)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = response.status
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise BuildError(
            f"no Arch mirror configured/reachable: {url} did not answer ({exc}); "
            f"set {MIRROR_ENV} to a reachable mirror"
        ) from None
    if status != 200:
        raise BuildError(f"no Arch mirror configured/reachable: {url} answered {status}")


class ArchRecipe(Recipe):
    distro = "arch"
    kind = "rabbitmq"
    packages = PACKAGES

    def __init__(self, name: str = "rabbitmq", *, compress: bool = COMPRESS) -> None:
        self.name = name
        self.compress = compress

    def source_files(self) -> list[Path]:
        return [Path(__file__).resolve(), Path(rootfs.__file__).resolve(), *guest.source_files()]

    def hash_extra(self) -> str:
        return f"arch={ARCH} initrd={','.join(INITRD_MODULES)} append={APPEND} compress={self.compress}"

    def preflight(self, progress: Progress) -> None:
        mirror = arch_mirror()  # first: the one thing these machines lack
        check_mirror(mirror)
        which("pacstrap", "pacman", "pacman-key", "unshare", "chroot", "mkfs.ext4", "qemu-img")
        if os.geteuid() != 0:
            raise BuildError("building the Arch image needs root (pacstrap, chroot)")
        progress(f"arch mirror: {mirror}")

    def steps(self) -> Sequence[Step]:
        return rootfs.rabbitmq_steps(
            Step(f"pacstrap {' '.join(PACKAGES)}", pacstrap),
            configure=configure,
            initramfs=initramfs,
            clean=clean,
            make_disk=self.make_disk,
        )

    def make_disk(self, ctx: Context) -> None:
        rootfs.make_disk(ctx, compress=self.compress)

    def manifest(self, ctx: Context) -> dict[str, Any]:
        return rootfs.rabbitmq_manifest(
            ctx,
            "arch",
            {
                "kernel_version": ctx.facts.get("kernel_version"),
                "rootfs_bytes": ctx.facts.get("rootfs_bytes"),
                "compressed": self.compress,
            },
        )


def render(root: Path) -> list[Path]:
    """Write every file the recipe adds to the guest into `root` (no network, no chroot):
    what configure() installs, for the build and for the lint tests."""
    written = guest.install(root, rabbit_unit=RABBIT_UNIT, extra=(guest.QGA_PATH_UNIT,))
    conf_d = root / "etc/rabbitmq/conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    files = {
        "etc/hostname": HOSTNAME + "\n",
        "etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost\n",
        "etc/machine-id": "",
        "etc/mkinitcpio-warren.conf": MKINITCPIO_CONF.format(modules=" ".join(INITRD_MODULES)),
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def pacstrap(ctx: Context) -> None:
    conf = ctx.work / "pacman.conf"
    conf.write_text(PACMAN_CONF.format(arch=ARCH, mirror=arch_mirror()))
    ctx.rootfs.mkdir()
    # -K: a fresh keyring in the guest; -M: the guest keeps its own mirrorlist.
    run(
        rootfs.in_namespace("pacstrap", "-C", str(conf), "-K", "-M", str(ctx.rootfs), *PACKAGES),
        ctx,
        summarize=lambda line: line if line.startswith(("::", "error", "warning")) else None,
    )


def configure(ctx: Context) -> None:
    root = ctx.rootfs
    render(root)
    (root / "var/lib/rabbitmq/.erlang.cookie").unlink(missing_ok=True)
    rootfs.remove_globs(root, ("var/lib/rabbitmq/mnesia/*",))
    ctx.facts["kernel_version"] = rootfs.kernel_version(root)
    timers = " ".join(DISABLE_TIMERS)
    script = f"""set -e
chown -R rabbitmq:rabbitmq /etc/rabbitmq /var/lib/rabbitmq
systemctl enable {" ".join(ENABLE_UNITS)}
systemctl mask {" ".join(MASK_UNITS)}
for t in {timers}; do systemctl disable "$t" 2>/dev/null || true; done
passwd -l root
test -x /usr/bin/qemu-ga
"""
    chroot(ctx, "sh", "-c", script)


def initramfs(ctx: Context) -> None:
    version = ctx.facts["kernel_version"]
    chroot(
        ctx,
        "mkinitcpio", "-c", "/etc/mkinitcpio-warren.conf", "-k", version,
        "-g", "/boot/initramfs-warren.img",
    )  # fmt: skip
    kernel = ctx.rootfs / "boot/vmlinuz-linux"
    if not kernel.is_file():
        kernel = ctx.rootfs / f"usr/lib/modules/{version}/vmlinuz"
    shutil.copyfile(kernel, ctx.work / "vmlinuz")
    shutil.copyfile(ctx.rootfs / "boot/initramfs-warren.img", ctx.work / "initrd.img")


def clean(ctx: Context) -> None:
    rootfs.remove_globs(
        ctx.rootfs,
        ("var/cache/pacman/pkg/*", "var/lib/pacman/sync/*", "var/log/*.log", "tmp/*", "var/tmp/*"),
    )
