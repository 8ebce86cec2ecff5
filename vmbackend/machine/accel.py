"""Choose the accelerator: KVM where it really works, TCG otherwise.

Opening /dev/kvm is not enough: on these machines (nested virtualisation) /dev/kvm opens, SeaBIOS
even runs, but a Linux guest hangs in early boot ("Probing EDD") and `-cpu host` aborts QEMU. So
the probe boots a real kernel under KVM, with the same CPU options the VMs get, and no root
file system: the kernel must get through its whole early init to the "VFS: Unable to mount root
fs" panic, which with `panic=-1 -no-reboot` makes QEMU exit by itself within a few seconds. The
verdict is cached per (host kernel, QEMU version), since those decide it.

`choose("auto")` reads WARREN_ACCEL itself, the one setting vmbackend reads outside the daemon's
Config (vmbackend/host/config.py says why): the image snapshot, the benches and the tests start
QEMU without a Config and must honour it too.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vmbackend.files import write_json_atomic
from vmbackend.machine import qemu

log = logging.getLogger(__name__)

CHOICES = ("auto", "kvm", "tcg")
PROBE_SECONDS = 8.0
PANIC_MARKERS = ("Kernel panic", "Unable to mount root fs")


@dataclass(frozen=True)
class Verdict:
    accel: str  # "kvm" or "tcg"
    reason: str
    cached: bool = False


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "warren"


def cache_key(qemu_bin: str = qemu.QEMU) -> str:
    return f"linux-{platform.release()}|qemu-{qemu.qemu_version(qemu_bin)}"


def kvm_device_usable(dev: str = "/dev/kvm") -> bool:
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def probe_args(kernel: Path, console: Path, accel: str, qemu_bin: str = qemu.QEMU) -> list[str]:
    """A minimal microvm that boots `kernel` with no root fs and exits on its panic."""
    args = [
        qemu_bin,
        "-M",
        qemu.MACHINE,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-m",
        "128M",
        "-no-reboot",
    ]
    if accel == "kvm":
        args += ["-accel", "kvm", "-cpu", "host"]
    else:
        args += ["-accel", f"tcg,tb-size={qemu.TCG_TB_SIZE_MB}"]
    append = qemu.kernel_cmdline(
        "console=ttyS0 panic=-1 loglevel=4",
        accel,
        qemu.host_tsc_khz() if accel == "tcg" else None,
    )
    return args + ["-kernel", str(kernel), "-append", append, "-serial", f"file:{console}"]


def probe(
    kernel: Path, accel: str = "kvm", seconds: float = PROBE_SECONDS, qemu_bin: str = qemu.QEMU
) -> tuple[bool, str]:
    """Boot `kernel` under `accel` until its no-root panic. (works, reason); never outlives `seconds`."""
    with tempfile.TemporaryDirectory(prefix="warren-accel-") as tmp:
        console = Path(tmp) / "console.log"
        args = probe_args(kernel, console, accel, qemu_bin)
        started = time.monotonic()
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            out, _ = proc.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            last = _last_line(console.read_text(errors="replace") if console.exists() else "")
            return False, f"{accel} guest stuck within {seconds:.0f} s at: {last}"
        elapsed = time.monotonic() - started
        text = console.read_text(errors="replace") if console.exists() else ""
        if proc.returncode == 0 and any(m in text for m in PANIC_MARKERS):
            return True, f"{accel} guest kernel booted through early init in {elapsed:.1f} s"
        last = _last_line((out or b"").decode(errors="replace"))
        return False, f"{accel} probe failed (exit {proc.returncode}): {last}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def choose(
    requested: str = "auto",
    *,
    kernel: Path | None = None,
    cache_dir: Path | None = None,
    qemu_bin: str = qemu.QEMU,
) -> Verdict:
    """The accelerator to use. `requested` (or `$WARREN_ACCEL` when it is "auto") may force one.

    In auto mode a cached verdict for this host kernel + QEMU version is used; otherwise KVM is
    probed with `kernel` (any bootable Linux kernel, e.g. the image's) and the verdict cached.
    """
    if requested == "auto":
        requested = os.environ.get("WARREN_ACCEL", "auto") or "auto"
    if requested not in CHOICES:
        raise ValueError(f"accelerator must be one of {', '.join(CHOICES)}, not {requested!r}")
    if requested != "auto":
        return Verdict(requested, "forced")
    if not kvm_device_usable():
        return Verdict("tcg", "/dev/kvm cannot be opened")
    if kernel is None:
        return Verdict("tcg", "no kernel to probe KVM with")
    cache_file = (cache_dir or default_cache_dir()) / "accel.json"
    key = cache_key(qemu_bin)
    try:
        cached = json.loads(cache_file.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        cached = None
    if isinstance(cached, dict) and cached.get("accel") in ("kvm", "tcg"):
        return Verdict(cached["accel"], str(cached.get("reason", "")), cached=True)
    works, reason = probe(kernel, "kvm", qemu_bin=qemu_bin)
    verdict = Verdict("kvm" if works else "tcg", reason)
    log.info("accel probe key=%s accel=%s reason=%s", key, verdict.accel, reason)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        data[key] = {"accel": verdict.accel, "reason": reason, "probed_at": time.time()}
        write_json_atomic(cache_file, data)
    except OSError as exc:  # a read-only cache only costs a probe next time
        log.warning("accel cache not written path=%s error=%s", cache_file, exc)
    return verdict
