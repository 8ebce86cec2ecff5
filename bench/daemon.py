"""The host daemon's own overhead per create-vm, and memory per VM.

Runs a real daemon subprocess against the local RabbitMQ (a private vhost it creates and removes)
and the images in WARREN_IMAGE_DIR (default ~/.cache/warren/images; build the tiny one with
`python -m vmbackend image build tiny`). For each of N sequential create-vm requests it measures

  total    = publish of create-vm -> instance.ready received by the client
  guest    = the ready event's `seconds` (from the QEMU launch starting to the management API
             answering: overlay, QEMU start, guest boot)
  overhead = total - guest   (validating, recording durably, replying, acking, events:
             the daemon's own part)

and prints medians, plus the RSS of each QEMU process and of the daemon.

    .venv/bin/python bench/daemon.py [--image tiny] [--runs 5] [--memory-mb 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.qemu_procs import qemu_pids  # noqa: E402
from tests.vmbackend.daemon_helpers import bench_host, wait_host  # noqa: E402
from vmbackend.client import Client  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory-mb", type=int, default=256)
    parser.add_argument("--ready-timeout", type=float, default=900)
    args = parser.parse_args()

    totals, guests, overheads, qemu_rss = [], [], [], []
    env = {"WARREN_BOOT_DEADLINE": str(args.ready_timeout)}
    with bench_host(prefix="wbd-", env=env, capacity=args.runs) as host:
        with Client(host.url) as client:
            client.watch_events("instance.*")
            wait_host(client, host.host_id)
            for i in range(args.runs):
                vm_id = f"bench-{i}-{uuid.uuid4().hex[:6]}"
                start = time.monotonic()
                client.call(
                    "create-vm", {"image": args.image, "vm-id": vm_id, "memory-mb": args.memory_mb}
                )
                event = client.wait_event(
                    vm_id, ("instance.ready", "instance.failed"), args.ready_timeout
                )
                total = time.monotonic() - start
                if event["type"] != "instance.ready":
                    print(f"run {i}: failed: {event.get('reason')}")
                    continue
                guest = float(event["seconds"])
                totals.append(total)
                guests.append(guest)
                overheads.append(total - guest)
                pids = qemu_pids(host.work / "state")
                qemu_rss.extend(rss_kib(p) for p in pids)
                print(
                    f"run {i}: total={total:.2f}s guest={guest:.2f}s overhead={total - guest:.3f}s"
                )
                client.call("delete-vm", {"vm-id": vm_id}, timeout=120)
            daemon_rss = rss_kib(host.daemon.proc.pid)
    if not totals:
        print("no successful runs")
        return 1
    print(f"image={args.image} runs={len(totals)} memory_mb={args.memory_mb}")
    print(f"median total (publish -> ready event)   {statistics.median(totals):.2f} s")
    print(f"median guest (QEMU launch -> ready)       {statistics.median(guests):.2f} s")
    print(f"median daemon overhead (total - guest)    {statistics.median(overheads):.3f} s")
    print(f"median QEMU RSS per VM                    {statistics.median(qemu_rss) / 1024:.0f} MiB")
    print(f"daemon RSS                                {daemon_rss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
