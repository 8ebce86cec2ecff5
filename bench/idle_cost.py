"""Idle cost of a VM under TCG by translation cache size (issue 13: the pool's idle VMs).

For each `--tb-sizes` value (MiB; 0 = QEMU's own default, no tb-size on the command line) boots
one tiny VM at a time through the real QemuMachine class (accel tcg), waits for its guest agent,
lets it sit idle `--idle` seconds, then reads its QEMU's VmRSS and the CPU it used over the last
`--window` seconds (% of one core). Prints the median of `--runs` VMs per size. Also says whether
the host kernel offers KSM (/sys/kernel/mm/ksm/run): detected, never required.

    .venv/bin/python bench/idle_cost.py [--tb-sizes 0,64,128,256] [--runs 3] [--idle 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmbackend.images import manifest  # noqa: E402
from vmbackend.machine import qemu  # noqa: E402
from vmbackend.machine.qemu import UserNet, VMSpec  # noqa: E402
from vmbackend.machine.qemu_machine import QemuMachine  # noqa: E402

KSM_RUN = Path("/sys/kernel/mm/ksm/run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ksm_state() -> str:
    """'on', 'off' (offered, not running) or 'absent'."""
    try:
        return "on" if KSM_RUN.read_text().strip() == "1" else "off"
    except OSError:
        return "absent"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def one(tb_size: int, images_root: Path, folder: Path, idle: float, window: float) -> tuple:
    qemu.TCG_TB_SIZE_MB = tb_size  # 0: the bench drops tb-size from the command line below
    vm_id = f"idle{uuid.uuid4().hex[:8]}"
    spec = VMSpec(
        vm_id=vm_id, image="tiny", memory_mb=256, vcpus=1, disk_gb=1, hostname=f"vm-{vm_id}",
        admin_user=f"warren-{uuid.uuid4().hex[:6]}", admin_password=uuid.uuid4().hex,
        network=UserNet("127.0.0.1", free_port(), free_port()),
    )  # fmt: skip
    machine = QemuMachine(spec, folder / vm_id, images_root, accel="tcg")
    try:
        machine.launch()
        machine.wait_guest_agent(time.monotonic() + 120)
        assert machine.pid is not None
        time.sleep(max(0.0, idle - window))
        start = cpu_ticks(machine.pid)
        time.sleep(window)
        cpu = (cpu_ticks(machine.pid) - start) / os.sysconf("SC_CLK_TCK") / window * 100
        return rss_mib(machine.pid), cpu
    finally:
        machine.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tb-sizes", default="0,64,128,256")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    images_root = manifest.default_images_root()
    print(f"qemu: {qemu.QEMU}; KSM: {ksm_state()} ({KSM_RUN})")
    original = qemu.build_args

    def without_tb_size(*a, **kw):  # type: ignore[no-untyped-def]
        out = original(*a, **kw)
        return [x.replace(",tb-size=0", "") for x in out]

    qemu.build_args = without_tb_size
    folder = Path(tempfile.mkdtemp(prefix="widle-"))
    try:
        for size in (int(s) for s in args.tb_sizes.split(",")):
            runs = [
                one(size, images_root, folder, args.idle, args.window) for _ in range(args.runs)
            ]
            rss = [r for r, _c in runs]
            cpu = [c for _r, c in runs]
            label = f"tb-size={size}" if size else "default"
            print(
                f"{label:14} RSS median {statistics.median(rss):6.1f} MiB "
                f"({', '.join(f'{r:.1f}' for r in rss)}); "
                f"CPU median {statistics.median(cpu):4.1f} % ({', '.join(f'{c:.1f}' for c in cpu)})",
                flush=True,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
