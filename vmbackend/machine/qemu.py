"""The QEMU command line, as pure functions of (image, VM spec, paths, accelerator).

No process is started here (except `create_overlay`, which runs `qemu-img`): the unit tests check
the argument list as data. The machine type is `microvm` with virtio-mmio devices, measured to work
on these machines (DESIGN.md); every file QEMU opens is named relative to the VM's own folder, which
is QEMU's working directory, so Unix socket paths stay far below the 108-byte limit wherever the
folder lives.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vmbackend.images.manifest import Manifest

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
MACHINE = "microvm,acpi=on,pcie=off,rtc=on"
TCG_TB_SIZE_MB = 256  # TCG's translation cache defaults to 1 GiB per process
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"
FW_CFG_PREFIX = "opt/warren/"
TLS_AMQP_PORT = 5671  # RabbitMQ's amqps listener in the guest (vmbackend/tls/guest_install.py)
TLS_MANAGEMENT_PORT = 15671  # the management UI over https in the guest
FW_CFG_KEYS = ("hostname", "admin_user", "admin_password", "erlang_cookie")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
TAP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _check_port(port: object) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"bad port {port!r}")


@dataclass(frozen=True)
class UserNet:
    """User-mode networking (default): host ports on `bind_address` forwarded to the guest."""

    bind_address: str
    management_port: int  # host port forwarded to the guest's management port (15672)
    amqp_port: int  # host port forwarded to the guest's AMQP port (5672)
    # TLS (docs/tls.md): host ports forwarded to the guest's amqps (5671) and https (15671).
    amqps_port: int | None = None
    https_port: int | None = None
    # False (a plan with TLS only): the plain AMQP port is not forwarded and the plain
    # management port only on the host's loopback, for the host's own calls.
    plain_ports: bool = True
    # True (a VM of an image with baked TLS, docs/tls.md): QEMU starts without the TLS forwards;
    # the host adds them once the VM's own certificate answers (tls_ports.open_tls_ports).
    tls_gated: bool = False

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.bind_address)  # ValueError for anything but an IP address
        _check_port(self.management_port)
        _check_port(self.amqp_port)
        for port in (self.amqps_port, self.https_port):
            if port is not None:
                _check_port(port)

    @property
    def management_bind(self) -> str:
        """Where the plain management port listens on the host."""
        if self.plain_ports:
            return self.bind_address
        return "::1" if ipaddress.ip_address(self.bind_address).version == 6 else "127.0.0.1"


@dataclass(frozen=True)
class TapNet:
    """Production option: an existing tap device (created by the daemon) on a bridge."""

    tap: str
    mac: str  # "52:54:00:xx:xx:xx", unique per VM

    def __post_init__(self) -> None:
        if not TAP_RE.fullmatch(self.tap):
            raise ValueError(f"bad tap device name {self.tap!r}")
        if not MAC_RE.fullmatch(self.mac):
            raise ValueError(f"bad MAC address {self.mac!r}")


@dataclass(frozen=True)
class VMSpec:
    """What one VM is: sizes, identity, admin credentials, network. The password is not in repr()."""

    vm_id: str
    image: str  # validated by the caller against ^[a-z0-9][a-z0-9._-]{0,63}$
    memory_mb: int
    vcpus: int
    disk_gb: int
    hostname: str
    admin_user: str
    admin_password: str = field(repr=False)  # never logged, never on a command line
    network: UserNet | TapNet = field(default_factory=lambda: UserNet("127.0.0.1", 15672, 5672))
    limits: dict[str, int] = field(default_factory=dict)  # {"max-connections": n, "max-queues": n}


@dataclass(frozen=True)
class VMPaths:
    """The files of one VM, all inside its own folder (also QEMU's working directory)."""

    vm_dir: Path

    # Names as QEMU sees them (relative to vm_dir, its cwd).
    DISK = "disk.qcow2"
    QMP = "qmp.sock"
    QGA = "qga.sock"
    CONSOLE = "console.log"
    LOG = "qemu.log"
    PIDFILE = "qemu.pid"
    FW_CFG_DIR = "fw_cfg"

    def _at(self, name: str) -> Path:
        return Path(self.vm_dir) / name

    @property
    def disk(self) -> Path:
        return self._at(self.DISK)

    @property
    def qmp(self) -> Path:
        return self._at(self.QMP)

    @property
    def qga(self) -> Path:
        return self._at(self.QGA)

    @property
    def console(self) -> Path:
        return self._at(self.CONSOLE)

    @property
    def log(self) -> Path:
        return self._at(self.LOG)

    @property
    def pidfile(self) -> Path:
        return self._at(self.PIDFILE)

    @property
    def fw_cfg_dir(self) -> Path:
        return self._at(self.FW_CFG_DIR)

    def fw_cfg_file(self, key: str) -> str:
        return f"{self.FW_CFG_DIR}/{key}"


def host_tsc_khz(cpuinfo: str | None = None) -> int:
    """The host's TSC frequency in kHz (for `tsc_early_khz=` under TCG).

    `/sys/devices/system/cpu/cpu0/tsc_freq_khz` where the kernel offers it, else the first
    `cpu MHz` line of /proc/cpuinfo (the calibrated TSC rate on constant_tsc machines without
    frequency scaling, such as these VMs; the kernel refines the early value after boot anyway).
    """
    sysfs = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
    if cpuinfo is None and sysfs.is_file():
        return int(sysfs.read_text().strip())
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)
    if not match:
        raise RuntimeError("cannot read the host TSC frequency from /proc/cpuinfo")
    return round(float(match.group(1)) * 1000)


def kernel_cmdline(append: str, accel: str, tsc_khz: int | None) -> str:
    """The image's kernel command line plus what this host needs.

    microvm under TCG hangs early in many boots ("tsc: Unable to calibrate against PIT") unless
    the guest is told the TSC rate.
    """
    parts = append.split()
    if accel == "tcg":
        if not tsc_khz:
            raise ValueError("TCG needs the host TSC frequency")
        parts = [p for p in parts if not p.startswith("tsc_early_khz=")]
        parts.append(f"tsc_early_khz={tsc_khz}")
    return " ".join(parts)


def _netdev(spec: VMSpec, manifest: Manifest) -> str:
    net = spec.network
    if isinstance(net, TapNet):
        return f"tap,id=net0,ifname={net.tap},script=no,downscript=no"
    forwards = [(net.management_bind, net.management_port, manifest.guest.management_port)]
    if manifest.guest.amqp_port is not None and net.plain_ports:
        forwards.append((net.bind_address, net.amqp_port, manifest.guest.amqp_port))
    # The TLS listeners exist only in RabbitMQ images; gated ones are forwarded later, never here.
    if manifest.guest.kind == "rabbitmq" and not net.tls_gated:
        if net.amqps_port is not None:
            forwards.append((net.bind_address, net.amqps_port, TLS_AMQP_PORT))
        if net.https_port is not None:
            forwards.append((net.bind_address, net.https_port, TLS_MANAGEMENT_PORT))
    fwd = "".join(f",hostfwd=tcp:{addr}:{host}-:{guest}" for addr, host, guest in forwards)
    return f"user,id=net0{fwd}"


def build_args(
    manifest: Manifest,
    spec: VMSpec,
    paths: VMPaths,
    accel: str,
    *,
    tsc_khz: int | None = None,
    incoming: str | None = None,
    with_disk: bool | None = None,
    qemu: str = QEMU,
) -> list[str]:
    """The full QEMU argument list for `spec` booting `manifest` (or restoring from `incoming`).

    `with_disk` defaults to whether the image has a disk; the VM's overlay is `paths.DISK`.
    The fw_cfg files must exist when QEMU starts (Machine writes them, mode 0600).
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accelerator must be kvm or tcg, not {accel!r}")
    if with_disk is None:
        with_disk = manifest.disk is not None
    args = [
        qemu,
        "-name",
        f"warren-{spec.vm_id},process=warren-{spec.vm_id}",
        "-M",
        MACHINE,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-vga",
        "none",
        "-m",
        f"{spec.memory_mb}M",
        "-smp",
        str(spec.vcpus),
    ]
    if accel == "kvm":
        args += ["-accel", "kvm", "-cpu", "host"]
    else:
        args += ["-accel", f"tcg,tb-size={TCG_TB_SIZE_MB}"]
    args += ["-kernel", str(manifest.kernel)]
    if manifest.initrd is not None:
        args += ["-initrd", str(manifest.initrd)]
    args += ["-append", kernel_cmdline(manifest.append, accel, tsc_khz)]
    if with_disk:
        args += [
            "-drive",
            f"id=disk0,file={paths.DISK},format=qcow2,if=none,cache=writeback,discard=unmap",
            "-device",
            "virtio-blk-device,drive=disk0",
        ]
    mac = f",mac={spec.network.mac}" if isinstance(spec.network, TapNet) else ""
    args += [
        "-netdev",
        _netdev(spec, manifest),
        "-device",
        f"virtio-net-device,netdev=net0{mac}",
        "-chardev",
        f"socket,id=qga0,path={paths.QGA},server=on,wait=off",
        "-device",
        "virtio-serial-device",
        "-device",
        f"virtserialport,chardev=qga0,name={GUEST_AGENT_PORT}",
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng0",
        "-qmp",
        f"unix:{paths.QMP},server=on,wait=off",
        "-serial",
        f"file:{paths.CONSOLE}",
        "-pidfile",
        paths.PIDFILE,
    ]
    # Every key is always present, so a saved state and the VMs restored from it have the same
    # fw_cfg names (the machine writes the files, mode 0600).
    for key in FW_CFG_KEYS:
        args += ["-fw_cfg", f"name={FW_CFG_PREFIX}{key},file={paths.fw_cfg_file(key)}"]
    if incoming is not None:
        args += ["-incoming", incoming]
    return args


SIGNATURE_FLAGS = (
    "-M",
    "-m",
    "-smp",
    "-accel",
    "-cpu",
    "-device",
    "-object",
    "-chardev",
    "-fw_cfg",
    "-drive",
)


def device_signature(args: list[str]) -> list[str]:
    """What a saved state and the VM restoring it must agree on: machine, sizes, accelerator,
    devices, fw_cfg names, drive and netdev type. Not: the name, ports, kernel command line."""
    sig = []
    for flag, value in zip(args, args[1:], strict=False):
        if flag in SIGNATURE_FLAGS:
            sig.append(f"{flag} {value}")
        elif flag == "-netdev":
            sig.append(f"{flag} {value.split(',')[0]}")
    return sig


def incoming_from(state_file: Path) -> str:
    """The `-incoming` URI that loads a zstd-compressed saved state (QEMU 7.2 has no file:)."""
    return f"exec:zstd -dc {shlex.quote(str(state_file))}"


def outgoing_to(state_file: Path) -> str:
    """The `migrate` URI that writes a zstd-compressed saved state."""
    return f"exec:zstd -1 -q -f -o {shlex.quote(str(state_file))}"


def overlay_args(base: Path, overlay: Path, disk_gb: int | None) -> list[list[str]]:
    """The qemu-img commands that create a copy-on-write overlay of `base` (absolute path)."""
    base = Path(base).resolve()
    cmds = [[QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)]]
    if disk_gb:
        cmds.append([QEMU_IMG, "resize", "-q", str(overlay), f"{disk_gb}G"])
    return cmds


def grow_args(disk: Path, disk_gb: int) -> list[str]:
    """The qemu-img command that grows `disk` to `disk_gb` GiB (qemu-img refuses to shrink)."""
    return [QEMU_IMG, "resize", "-q", str(disk), f"{disk_gb}G"]


def grow_disk(disk: Path, disk_gb: int) -> bool:
    """Grow the (stopped) VM's disk image to `disk_gb` GiB; never shrinks it. True if it grew."""
    if base_virtual_size(disk) >= disk_gb * 1024**3:
        return False
    subprocess.run(grow_args(disk, disk_gb), check=True, capture_output=True, text=True, timeout=60)
    return True


def base_virtual_size(base: Path) -> int:
    """Virtual size of a qcow2 image in bytes."""
    out = subprocess.run(
        [QEMU_IMG, "info", "--output=json", str(base)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return int(json.loads(out)["virtual-size"])


def create_overlay(base: Path, overlay: Path, disk_gb: int | None = None) -> None:
    """Create `overlay` backed by `base`, grown to `disk_gb` GiB (never shrunk below the base)."""
    grow = disk_gb if disk_gb and disk_gb * 1024**3 > base_virtual_size(base) else None
    for cmd in overlay_args(base, overlay, grow):
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


def qemu_version(qemu: str = QEMU) -> str:
    """`qemu-system-x86_64 --version`'s version number, e.g. "7.2.22"."""
    out = subprocess.run(
        [qemu, "--version"], check=True, capture_output=True, text=True, timeout=30
    )
    match = re.search(r"version ([0-9][^\s]*)", out.stdout)
    return match.group(1) if match else out.stdout.strip()
