"""The tiny test image: Debian's cloud kernel + an initramfs with busybox and the real qemu-ga.

It boots in seconds under TCG and walks the same readiness path as the RabbitMQ image: fw_cfg
per-VM settings (hostname, admin user and password), DHCP, the guest agent on its virtio-serial
port, and a management-API look-alike on port 15672 (GET /api/overview with HTTP basic auth of
the VM's own admin, 401 otherwise; the user/permission/limit calls the restore path makes). No
disk. Nothing is installed on the host: the kernel and qemu-guest-agent .debs are fetched with
`apt-get download` into a cache folder and unpacked with `dpkg-deb -x`.

    build(images_root, progress) -> images_root/"tiny"
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from vmbackend.images import manifest

NAME = "tiny"
KERNEL_META = "linux-image-cloud-amd64"
AGENT_PKG = "qemu-guest-agent"
GUEST_FILES = Path(__file__).with_name("tiny")
# virtio over MMIO (microvm) and PCI (q35), the agent's serial port, NIC, disk, RNG, fw_cfg, and
# the ACPI power button (system_powerdown). Dependencies are read from each module's modinfo.
MODULES = (
    "virtio_mmio",
    "virtio_pci",
    "virtio_console",
    "virtio_net",
    "virtio_blk",
    "virtio-rng",
    "qemu_fw_cfg",
    "button",
    "evdev",
)
APPEND = "console=ttyS0 quiet loglevel=4"
BUSYBOX = Path("/bin/busybox")

Progress = Callable[[str], None]


class TinyBuildError(Exception):
    """The tiny image could not be built (the message says which step)."""


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(
            cmd, check=True, capture_output=True, text=True, timeout=600, cwd=cwd
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise TinyBuildError(f"{cmd[0]} failed: {(exc.stderr or '').strip()[-500:]}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TinyBuildError(f"{cmd[0]} failed: {exc}") from exc


def _candidate(pkg: str) -> tuple[str, str]:
    """(package, version) that `apt-get download pkg` would fetch."""
    out = _run(["apt-cache", "show", "--no-all-versions", pkg])
    version = re.search(r"^Version: (\S+)", out, re.MULTILINE)
    if not version:
        raise TinyBuildError(f"apt knows no package {pkg}")
    return pkg, version.group(1)


def resolve_packages(progress: Progress) -> list[tuple[str, str]]:
    """The exact kernel and agent packages (name, version), updating apt's lists if needed."""
    try:
        return _resolve()
    except TinyBuildError:
        progress("apt lists missing or stale: apt-get update")
        _run(["apt-get", "update", "-q"])
        return _resolve()


def _resolve() -> list[tuple[str, str]]:
    deps = _run(["apt-cache", "depends", KERNEL_META])
    kernel = re.search(r"Depends: (linux-image-\S+-cloud-amd64)", deps)
    if not kernel:
        raise TinyBuildError(f"cannot resolve {KERNEL_META}")
    return [_candidate(kernel.group(1)), _candidate(AGENT_PKG)]


def fetch_deb(cache: Path, pkg: str, version: str, progress: Progress) -> Path:
    """The .deb of pkg=version, downloaded once into cache/<pkg>_<version>/."""
    folder = cache / f"{pkg}_{version.replace(':', '%3a')}"
    found = sorted(folder.glob("*.deb")) if folder.is_dir() else []
    if found:
        return found[0]
    progress(f"downloading {pkg} {version}")
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=cache))
    try:
        os.chmod(tmp, 0o755)  # noqa: S103 - apt-get download drops to user _apt to write here
        _run(["apt-get", "download", "-q", f"{pkg}={version}"], cwd=tmp)
        debs = list(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise TinyBuildError(f"apt-get download {pkg} gave {len(debs)} files")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return next(folder.glob("*.deb"))


def recipe_hash(packages: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    for path in sorted(GUEST_FILES.iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    for pkg, version in packages:
        h.update(f"{pkg}={version}\n".encode())
    h.update(hashlib.sha256(BUSYBOX.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def module_depends(ko: Path) -> list[str]:
    """The `depends=` list from a kernel module's .modinfo section (no modinfo tool needed)."""
    data = ko.read_bytes()
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if not match or not match.group(1):
        return []
    return match.group(1).decode().split(",")


def module_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files for `wanted` and their dependencies, dependencies first."""
    index: dict[str, Path] = {}
    for ko in modules_dir.rglob("*.ko"):
        index[ko.stem] = ko
        index.setdefault(ko.stem.replace("-", "_"), ko)
    ordered: list[Path] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        ko = index.get(name) or index.get(name.replace("-", "_"))
        if ko is None:
            raise TinyBuildError(f"kernel module {name} not found")
        if ko in ordered:
            return
        if name in chain:
            raise TinyBuildError(f"module dependency cycle at {name}")
        for dep in module_depends(ko):
            visit(dep, (*chain, name))
        ordered.append(ko)

    for name in wanted:
        visit(name, ())
    return ordered


def _copy_with_libs(binary: Path, root: Path) -> None:
    """Copy `binary` (from an unpacked .deb) and the host libraries `ldd` names into `root`."""
    out = _run(["ldd", str(binary)])
    for lib in re.findall(r"(/\S+) \(0x", out):
        src = Path(lib)
        dest = root / src.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.resolve(), dest)
    dest = root / "usr/sbin" / binary.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, dest)


def make_initramfs(root: Path, out: Path) -> None:
    """`root` as a gzip-compressed newc cpio archive, every file owned by root."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    cpio = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        input="\n".join(files).encode() + b"\n",
        cwd=root,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    with open(out, "wb") as f:
        subprocess.run(["gzip", "-6", "-n"], input=cpio, stdout=f, check=True, timeout=120)


def _assemble(work: Path, debs: dict[str, Path], progress: Progress) -> tuple[Path, Path]:
    """Unpack the .debs and lay out the initramfs tree; returns (kernel, root)."""
    kernel_tree, agent_tree, root = work / "kernel", work / "agent", work / "root"
    progress("unpacking kernel and guest agent")
    _run(["dpkg-deb", "-x", str(debs["kernel"]), str(kernel_tree)])
    _run(["dpkg-deb", "-x", str(debs["agent"]), str(agent_tree)])
    kernels = sorted((kernel_tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise TinyBuildError("kernel package has no single vmlinuz")
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/local/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "etc",
        "var",
        "lib/modules",
        "root",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/run").symlink_to("/run")
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    _copy_with_libs(agent_tree / "usr/sbin/qemu-ga", root)
    progress("choosing kernel modules")
    order = module_order(kernel_tree / "lib/modules", MODULES)
    for ko in order:
        shutil.copy2(ko, root / "lib/modules" / ko.name)
    (root / "lib/modules/load-order").write_text("".join(f"{ko.stem}\n" for ko in order))
    shutil.copy2(GUEST_FILES / "init", root / "init")
    shutil.copy2(GUEST_FILES / "udhcpc.script", root / "etc/udhcpc.script")
    for name in ("api.sh", "warren-restore-settings"):
        shutil.copy2(GUEST_FILES / name, root / "usr/local/sbin" / name)
    (root / "etc/hostname").write_text("tiny\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    return kernels[0], root


def build(images_root: Path, progress: Progress = print) -> Path:
    """Build (or reuse, when the recipe is unchanged) images_root/tiny; returns its folder."""
    images_root = Path(images_root)
    images_root.mkdir(parents=True, exist_ok=True)
    target = manifest.image_dir(images_root, NAME)
    with open(images_root / f".{NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test sessions build once
        packages = resolve_packages(progress)
        wanted = recipe_hash(packages)
        try:
            current = manifest.load(images_root, NAME)
            if current.recipe_hash == wanted:
                progress(f"{NAME}: up to date ({wanted[:19]})")
                return target
        except manifest.ImageError:
            pass
        cache = images_root / ".downloads"
        cache.mkdir(exist_ok=True)
        debs = {
            "kernel": fetch_deb(cache, *packages[0], progress),
            "agent": fetch_deb(cache, *packages[1], progress),
        }
        work = Path(tempfile.mkdtemp(prefix=f".{NAME}-build-", dir=images_root))
        try:
            kernel, root = _assemble(work, debs, progress)
            out = work / NAME
            out.mkdir()
            shutil.copy2(kernel, out / "vmlinuz")
            progress("packing initramfs")
            make_initramfs(root, out / "initrd.img")
            manifest.write_manifest(
                out,
                {
                    "name": NAME,
                    "distro": "debian",
                    "recipe_hash": wanted,
                    "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "kernel": "vmlinuz",
                    "initrd": "initrd.img",
                    "disk": None,
                    "append": APPEND,
                    "guest": {"kind": NAME, "management_port": 15672, "amqp_port": 5672},
                    "saved_state": None,
                    "packages": {pkg: version for pkg, version in packages},
                },
            )
            if target.exists():
                target.rename(work / "old")  # removed with `work` below
            out.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        progress(f"{NAME}: built {target}")
        return target
