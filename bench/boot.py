"""Boot benchmark: cold boot vs restore from saved state, per image, one VM at a time.

Prints, for each image present (tiny always; rabbitmq-4.0 when built), the median seconds from QEMU
start to (a) the guest agent answering and (b) the management API answering with the VM's own
credentials (after personalization on a restore), the median RSS of the QEMU process once ready,
and the cold/restore ratio.

    .venv/bin/python bench/boot.py [--runs 3] [--images tiny,rabbitmq-4.0,rabbitmq-3.10] [--images-root DIR]

The tiny image's saved state is made in a private copy of the image (so tests keep booting the
shared one cold); the rabbitmq image's restore uses its saved/ from `image snapshot` if present.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.net import free_port  # noqa: E402
from vmbackend.images import manifest, tiny  # noqa: E402
from vmbackend.machine import (
    saved_state,  # noqa: E402
    snapshot,  # noqa: E402
)
from vmbackend.machine.qemu import UserNet, VMSpec  # noqa: E402
from vmbackend.machine.qemu_machine import QemuMachine  # noqa: E402

DEADLINE = {"tiny": 120.0, "rabbitmq": 400.0}
MEMORY = {"tiny": 256, "rabbitmq": 512}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_boot(root: Path, image: str, memory_mb: int, vcpus: int, work: Path, mode: str) -> dict:
    vm_id = uuid.uuid4().hex[:12]
    spec = VMSpec(
        vm_id=vm_id,
        image=image,
        memory_mb=memory_mb,
        vcpus=vcpus,
        disk_gb=4,
        hostname=f"bench-{vm_id[:6]}",
        admin_user=f"warren-{vm_id[:6]}",
        admin_password=uuid.uuid4().hex,
        network=UserNet("127.0.0.1", free_port(), free_port()),
    )
    machine = QemuMachine(spec, work / vm_id, root)
    try:
        started = time.monotonic()
        deadline = started + DEADLINE.get(image, 400.0)
        boot = machine.launch(allow_restore=mode == "restore")
        machine.wait_guest_agent(deadline)
        agent = time.monotonic() - started
        machine.personalize(deadline)
        machine.wait_management(machine.management_url(), deadline)
        mgmt = time.monotonic() - started
        return {"boot": boot, "agent": agent, "mgmt": mgmt, "rss": rss_mib(machine.pid)}
    finally:
        machine.destroy()


def run_mode(root: Path, image: str, mode: str, runs: int, vcpus: int, work: Path) -> dict | None:
    meta = saved_state.load_meta(manifest.load(root, image)) or {}
    memory_mb = meta.get("memory_mb", MEMORY.get(image, 512))  # the saved state's size, if any
    vcpus = meta.get("vcpus", vcpus)
    results = []
    for i in range(runs):
        r = one_boot(root, image, memory_mb, vcpus, work, mode)
        if r["boot"] != mode:
            print(f"  {image} {mode}: run {i + 1} booted {r['boot']}, not {mode}; skipped")
            return None
        print(
            f"  {image} {mode} run {i + 1}: agent {r['agent']:.2f} s, management "
            f"{r['mgmt']:.2f} s, RSS {r['rss']:.0f} MiB",
            flush=True,
        )
        results.append(r)
    return {k: statistics.median(r[k] for r in results) for k in ("agent", "mgmt", "rss")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", default="")
    parser.add_argument("--images-root", type=Path, default=manifest.default_images_root())
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--modes", default="cold,restore", help="cold, restore or both")
    args = parser.parse_args(argv)
    root: Path = args.images_root
    tiny.build(root, progress=lambda m: None)
    wanted = args.images.split(",") if args.images else ["tiny", "rabbitmq-4.0"]
    work = Path(tempfile.mkdtemp(prefix="wbench-"))
    rows = []
    try:
        for image in wanted:
            if image not in manifest.available(root):
                print(f"{image}: not built under {root}; skipped")
                continue
            image_root = root
            if image == "tiny":  # private copy with its own saved state
                image_root = work / "images"
                shutil.copytree(
                    root / "tiny", image_root / "tiny", ignore=shutil.ignore_patterns("saved")
                )
                snapshot.create(
                    image_root, "tiny", lambda m: None, memory_mb=MEMORY["tiny"], vcpus=args.vcpus
                )
            modes = args.modes.split(",")
            print(f"{image}: {args.runs} boots each: {', '.join(modes)}", flush=True)
            cold = restore = None
            if "cold" in modes:
                cold = run_mode(image_root, image, "cold", args.runs, args.vcpus, work)
            if "restore" not in modes:
                pass
            elif saved_state.load_meta(manifest.load(image_root, image)) is None:
                print(
                    f"  {image}: no saved state (run `python -m vmbackend image snapshot "
                    f"{image}`); restore skipped"
                )
            else:
                restore = run_mode(image_root, image, "restore", args.runs, args.vcpus, work)
            rows.append((image, cold, restore))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'image':<10} {'mode':<8} {'agent s':>8} {'mgmt s':>8} {'RSS MiB':>8}")
    for image, cold, restore in rows:
        for mode, r in (("cold", cold), ("restore", restore)):
            if r:
                print(
                    f"{image:<10} {mode:<8} {r['agent']:>8.2f} {r['mgmt']:>8.2f} {r['rss']:>8.0f}"
                )
        if cold and restore:
            print(
                f"{image:<10} cold/restore: agent {cold['agent'] / restore['agent']:.1f}x, "
                f"management {cold['mgmt'] / restore['mgmt']:.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
