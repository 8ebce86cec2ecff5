"""Self-healing: seconds from a `kill -9` of a ready VM's QEMU to its management URL answering
again, when the host daemon restarts it on its own (a cold boot from the VM's own disk).

Runs a real daemon subprocess against the local RabbitMQ (a private vhost it creates and removes)
and the images in WARREN_IMAGE_DIR (default ~/.cache/warren/images; `make images` builds
rabbitmq-4.0). One VM is created (512 MiB: restored from the saved state, as a customer's), then
for each round: SIGKILL its QEMU, time `instance.restarting` and the management API answering
GET /api/overview with the VM's own credentials. The restart policy's window is set to 1 s so
every round is a first attempt (no backoff delay in the number); the host's load average at the
kill is printed with each round, since other VMs on the host slow a TCG boot a lot.

    .venv/bin/python bench/healing.py [--image rabbitmq-4.0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.qemu_procs import qemu_pids  # noqa: E402
from tests.vmbackend.daemon_helpers import basic_auth_status, bench_host, wait_host  # noqa: E402
from vmbackend.client import Client  # noqa: E402


def wait_event(client: Client, vm_id: str, types: tuple[str, ...], after: int, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for event in client.events:
            if (
                event.get("instance_id") == vm_id
                and event.get("type") in types
                and event["seq"] > after
            ):
                return event
        client.pump(0.2)
    raise TimeoutError(f"no {types} for {vm_id} within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="rabbitmq-4.0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=1500)
    args = parser.parse_args()

    noticed, answered = [], []
    vm_id = f"bench-heal-{uuid.uuid4().hex[:6]}"
    env = {"WARREN_BOOT_DEADLINE": str(args.timeout), "WARREN_RESTART_INTERVAL": "1"}
    with bench_host(prefix="wbh-", env=env) as host:
        with Client(host.url) as client:
            client.watch_events("instance.*")
            wait_host(client, host.host_id)
            reply = client.call(
                "create-vm", {"image": args.image, "vm-id": vm_id, "memory-mb": args.memory_mb}
            )
            password = reply["response"]["admin-password"]
            ready = wait_event(
                client, vm_id, ("instance.ready", "instance.failed"), 0, args.timeout
            )
            if ready["type"] != "instance.ready":
                print(f"create-vm failed: {ready.get('reason')}")
                return 1
            print(f"ready: boot={ready['boot']} seconds={ready['seconds']}")
            user, management = ready["admin_username"], ready["management_url"]
            for i in range(args.rounds):
                time.sleep(2)  # the interval's 1 s window: this kill is a first attempt
                seq = max(e.get("seq", 0) for e in client.events if e.get("instance_id") == vm_id)
                [pid] = qemu_pids(host.work / "state")
                load = os.getloadavg()[0]
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                restarting = wait_event(client, vm_id, ("instance.restarting",), seq, 60)
                noticed.append(time.monotonic() - killed)
                again = wait_event(
                    client,
                    vm_id,
                    ("instance.ready", "instance.lost", "instance.restarting"),
                    restarting["seq"],
                    args.timeout,
                )
                if again["type"] != "instance.ready":
                    print(f"round {i}: {again['type']}: {again.get('reason')}")
                    return 1
                while basic_auth_status(management, user, password) != 200:
                    client.pump(0.2)
                answered.append(time.monotonic() - killed)
                print(
                    f"round {i}: load {load:.1f} at the kill; instance.restarting after "
                    f"{noticed[-1]:.1f} s, management URL answering again after "
                    f"{answered[-1]:.1f} s"
                )
            client.call("delete-vm", {"vm-id": vm_id}, timeout=120)
    print(f"image={args.image} rounds={len(answered)} memory_mb={args.memory_mb}")
    print(f"median kill -9 -> instance.restarting          {statistics.median(noticed):.1f} s")
    print(f"median kill -9 -> management URL answering     {statistics.median(answered):.1f} s")
    print("each: " + ", ".join(f"{s:.1f}" for s in answered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
