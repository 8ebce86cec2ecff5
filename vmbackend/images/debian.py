"""The Debian RabbitMQ image: debootstrap, configure in a chroot, kernel + initrd + qcow2 disk.

Layout and guest contract: docs/images.md. Commands on the root file system run in private mount
namespaces (rootfs.py), so nothing stays mounted when a build is killed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmbackend.images import guest, rootfs
from vmbackend.images.build import BuildError, Context, Progress, Recipe, Step
from vmbackend.images.rootfs import chroot
from vmbackend.images.runner import run, which
from vmbackend.protocol import versions

# The Debian releases the recipe knows: the suite decides the RabbitMQ and Erlang versions
# (bookworm: 3.10.8 / Erlang 25; trixie: 4.0.5 / Erlang 27). Which image uses which: versions.py.
SUITES: tuple[str, ...] = ("bookworm", "trixie")
# Suites whose image listens on amqps/https from its first start (docs/tls.md): measured on
# RabbitMQ 4.0 / OTP 27 only; bookworm (3.10, OTP 25) keeps the run-time install.
TLS_BAKED_SUITES: tuple[str, ...] = ("trixie",)
PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "dbus",
    "rabbitmq-server",
    "qemu-guest-agent",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "iproute2",
    "netbase",
    "procps",
    "curl",
    "ca-certificates",
    # resize2fs and chattr for warren-firstboot; bookworm's minbase has them, trixie's does not.
    "e2fsprogs",
    # hwclock: the guest agent's guest-set-time (after a restore) runs it; not in trixie's minbase.
    "util-linux-extra",
)
# The cloud kernel has the virtio drivers as modules; the initrd needs them to find /dev/vda on
# both microvm (virtio-mmio) and q35 (virtio-pci). ext4 and crc32c are built into the cloud kernel;
# they are listed so the initrd still mounts the root with a kernel that has them as modules.
INITRD_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "ext4",
    "crc32c_generic",
)
# Units that only cost boot time or wake the guest up for nothing in a VM.
DISABLE_UNITS: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "logrotate.timer",
    "cron.service",
    "e2scrub_reap.service",
    "getty@tty1.service",
)
MASK_UNITS: tuple[str, ...] = (
    "systemd-networkd-wait-online.service",
    "getty.target",  # no logins: root is locked and the console is a log file
    "serial-getty@ttyS0.service",
)
ENABLE_UNITS: tuple[str, ...] = ("systemd-networkd.service", guest.FIRSTBOOT_UNIT)
RABBIT_UNIT = "rabbitmq-server.service"
APPEND = rootfs.APPEND
HOSTNAME = "rabbitmq"
DEBOOTSTRAP_CACHE = Path.home() / ".cache" / "warren" / "debootstrap"
# qcow2 compression: see docs/images.md for the measurement behind this choice.
COMPRESS = True


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here (WARREN_DEBIAN_MIRROR overrides): the URI of the first
    apt source with a Debian release suite (bookworm, trixie; not -security/-updates) and the
    `main` component. One archive carries every release, so a bookworm host's mirror serves
    trixie too."""
    override = os.environ.get("WARREN_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    entries: list[tuple[str, list[str], list[str]]] = []
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", ""):
                continue
            for uri in fields.get("uris", "").split():
                entries.append(
                    (uri, fields.get("suites", "").split(), fields.get("components", "").split())
                )
    lists = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 4 and words[0] == "deb":
                entries.append((words[1], [words[2]], words[3:]))
    for uri, suites, components in entries:
        if any(suite in SUITES for suite in suites) and "main" in components:
            return uri.rstrip("/")
    raise BuildError(
        f"no apt source for Debian {'/'.join(SUITES)} main in {sources_dir}; "
        "set WARREN_DEBIAN_MIRROR"
    )


class _DebootstrapSummary:
    """Turns debootstrap's one-line-per-package output into a line per phase (with counts)."""

    def __init__(self) -> None:
        self.phase = ""
        self.count = 0

    def __call__(self, line: str) -> str | None:
        if line.startswith(("W: ", "E: ")):
            return line
        if not line.startswith("I: "):
            return None
        words = line[3:].split()
        phase = words[0] if words else ""
        if phase == self.phase:
            self.count += 1
            return f"{phase} {self.count} ..." if self.count % 50 == 0 else None
        self.phase, self.count = phase, 1
        return line[3:]


class DebianRecipe(Recipe):
    distro = "debian"
    kind = "rabbitmq"
    packages = PACKAGES

    def __init__(
        self, name: str = "rabbitmq", *, suite: str | None = None, compress: bool = COMPRESS
    ) -> None:
        """`suite` defaults to the one the image name's RabbitMQ version comes from
        (versions.py: `rabbitmq-4.0` is trixie, `rabbitmq-3.10` and `rabbitmq` bookworm)."""
        self.name = name
        self.compress = compress
        if suite is None:
            version = versions.for_image(name)
            if version is None:
                known = [v.image for v in versions.VERSIONS] + list(versions.LEGACY_IMAGES)
                raise BuildError(f"no Debian release known for image {name!r}; known: {known}")
            suite = version.debian_suite
        if suite not in SUITES:
            raise BuildError(f"unknown Debian suite {suite!r}; known: {SUITES}")
        self.suite = suite

    def source_files(self) -> list[Path]:
        return [Path(__file__).resolve(), Path(rootfs.__file__).resolve(), *guest.source_files()]

    def hash_extra(self) -> str:
        return (
            f"suite={self.suite} initrd={','.join(INITRD_MODULES)} append={APPEND} "
            f"compress={self.compress}"
        )

    def preflight(self, progress: Progress) -> None:
        which("debootstrap", "unshare", "chroot", "mkfs.ext4", "qemu-img")
        if os.geteuid() != 0:
            raise BuildError("building the Debian image needs root (debootstrap, chroot)")
        progress(f"debian mirror: {debian_mirror()}")

    def steps(self) -> Sequence[Step]:
        install = Step(
            f"debootstrap {self.suite} ({len(PACKAGES)} packages + minbase)", self.debootstrap
        )
        return rootfs.rabbitmq_steps(
            install,
            configure=self.configure,
            initramfs=initramfs,
            clean=clean,
            make_disk=self.make_disk,
        )

    def debootstrap(self, ctx: Context) -> None:
        debootstrap(ctx, self.suite)

    @property
    def tls_baked(self) -> bool:
        return self.suite in TLS_BAKED_SUITES

    def configure(self, ctx: Context) -> None:
        configure(ctx, tls_baked=self.tls_baked)

    def make_disk(self, ctx: Context) -> None:
        rootfs.make_disk(ctx, compress=self.compress)

    def manifest(self, ctx: Context) -> dict[str, Any]:
        return rootfs.rabbitmq_manifest(
            ctx,
            "debian",
            tls_baked=self.tls_baked,
            details={
                "suite": self.suite,
                "kernel_version": ctx.facts.get("kernel_version"),
                "rabbitmq_version": ctx.facts.get("rabbitmq_version"),
                "rootfs_bytes": ctx.facts.get("rootfs_bytes"),
                "compressed": self.compress,
            },
        )


def debootstrap(ctx: Context, suite: str) -> None:
    DEBOOTSTRAP_CACHE.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    run(
        rootfs.in_namespace(
            "debootstrap", "--variant=minbase", f"--cache-dir={DEBOOTSTRAP_CACHE}",
            "--include=" + ",".join(PACKAGES),
            suite, str(ctx.rootfs), mirror,
        ),
        ctx,
        summarize=_DebootstrapSummary(),
    )  # fmt: skip


def configure(ctx: Context, *, tls_baked: bool = False) -> None:
    root = ctx.rootfs
    guest.install(root, rabbit_unit=RABBIT_UNIT, extra=guest.TLS_FILES if tls_baked else ())
    if tls_baked:
        rootfs.write_throwaway_tls(root)  # before the chroot's chown -R /etc/rabbitmq
    (root / "etc/rabbitmq/conf.d").mkdir(mode=0o755, exist_ok=True)
    (root / "etc/hostname").write_text(HOSTNAME + "\n")
    hosts = "127.0.0.1\tlocalhost\n127.0.1.1\t{0}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    (root / "etc/hosts").write_text(hosts.format(HOSTNAME))
    # Empty: systemd makes a fresh machine id at each VM's first boot.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # The package's cookie and any database from the install: every VM gets its own.
    (root / "var/lib/rabbitmq/.erlang.cookie").unlink(missing_ok=True)
    rootfs.remove_globs(root, ("var/lib/rabbitmq/mnesia/*",))
    ctx.facts["kernel_version"] = rootfs.kernel_version(root)
    script = f"""set -e
chown -R rabbitmq:rabbitmq /etc/rabbitmq /var/lib/rabbitmq
systemctl enable {" ".join(ENABLE_UNITS)}
# Not every release has every unit (trixie's minbase has no cron): disable the ones there.
for unit in {" ".join(DISABLE_UNITS)}; do
    if [ -e /usr/lib/systemd/system/$unit ] || [ -e /lib/systemd/system/$unit ]; then
        systemctl disable $unit
    fi
done
systemctl mask {" ".join(MASK_UNITS)}
passwd -l root
test -x /usr/sbin/qemu-ga
dpkg-query -W -f='${{Version}}' rabbitmq-server > /tmp/rabbitmq-version
"""
    chroot(ctx, "sh", "-c", script)
    version_file = root / "tmp/rabbitmq-version"
    ctx.facts["rabbitmq_version"] = version_file.read_text().strip()
    version_file.unlink()


def initramfs(ctx: Context) -> None:
    root = ctx.rootfs
    conf = root / "etc/initramfs-tools/initramfs.conf"
    text = conf.read_text()
    text, n = re.subn(r"(?m)^MODULES=.*$", "MODULES=list", text)
    if n != 1:
        raise BuildError("initramfs.conf has no MODULES= line")
    conf.write_text(text)
    (root / "etc/initramfs-tools/modules").write_text("\n".join(INITRD_MODULES) + "\n")
    version = ctx.facts["kernel_version"]
    for old in (root / "boot").glob("initrd.img-*"):
        old.unlink()
    chroot(ctx, "update-initramfs", "-c", "-k", version)
    shutil.copyfile(root / f"boot/vmlinuz-{version}", ctx.work / "vmlinuz")
    shutil.copyfile(root / f"boot/initrd.img-{version}", ctx.work / "initrd.img")
    size = (ctx.work / "initrd.img").stat().st_size
    ctx.progress(f"  kernel {version}, initrd {size / 1e6:.1f} MB")


def clean(ctx: Context) -> None:
    rootfs.remove_globs(
        ctx.rootfs,
        (
            "var/cache/apt/*.bin",
            "var/cache/apt/archives/*.deb",
            "var/cache/apt/archives/partial/*",
            "var/lib/apt/lists/*_*",
            "var/cache/debconf/*-old",
            "var/log/*.log",
            "var/log/apt/*",
            "tmp/*",
            "var/tmp/*",
            "root/.bash_history",
        ),
    )
