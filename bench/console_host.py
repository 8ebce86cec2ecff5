"""How long the customer's console commands take on the host, end to end.

Runs a real daemon subprocess against the local RabbitMQ (a private vhost it creates and removes)
and one VM of --image (default tiny; build it with `python -m vmbackend image build tiny`). For
--runs rounds it sends, as the shop does (no reply_to, routing key host.<id>, a fresh
request id each), and measures publish -> instance.command_done received:

  rotation  set-admin-password (management API PUT, connections closed, state written)
  resize    resize-vm to a new size each round (clean stop, grow, start, ready again)
  restart   restart-vm with a request id (clean stop, start, ready again)
  repeat    a rotation's message sent again (the remembered outcome re-published, no action)

and prints the medians.

    .venv/bin/python bench/console_host.py [--image tiny] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from tests.vmbackend.daemon_helpers import bench_host, wait_host  # noqa: E402
from vmbackend.client import Client  # noqa: E402
from vmbackend.protocol import messages, topology  # noqa: E402


def send(client: Client, host_id: str, body: dict[str, Any]) -> float:
    """Publish like the shop's relay; returns the time it was sent (monotonic)."""
    client.channel.basic_publish(
        topology.COMMANDS_EXCHANGE,
        topology.host_key(host_id),
        messages.encode(body),
        pika.BasicProperties(content_type="application/json", delivery_mode=2),
    )
    return time.monotonic()


def outcome(client: Client, vm_id: str, request_id: str, count: int, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = [
            e
            for e in client.events
            if e.get("instance_id") == vm_id
            and e.get("request_id") == request_id
            and e.get("type") in ("instance.command_done", "instance.command_failed")
        ]
        if len(found) >= count:
            return found[count - 1]
        client.pump(0.05)
    raise RuntimeError(f"no outcome for {request_id} within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1500)
    args = parser.parse_args()

    times: dict[str, list[float]] = {"rotation": [], "resize": [], "restart": [], "repeat": []}
    vm_id = f"bench-{uuid.uuid4().hex[:6]}"
    env = {"WARREN_BOOT_DEADLINE": str(args.timeout)}
    with bench_host(prefix="wbc-", env=env) as host:
        host_id = host.host_id
        with Client(host.url) as client:
            client.watch_events("instance.*")
            wait_host(client, host_id)
            reply = client.call("create-vm", {"image": args.image, "vm-id": vm_id})
            user = reply["response"]["admin-username"]
            ready = client.wait_event(vm_id, ("instance.ready", "instance.failed"), args.timeout)
            if ready["type"] != "instance.ready":
                print(f"the VM failed: {ready.get('reason')}")
                return 1
            for i in range(args.runs):
                rid = str(uuid.uuid4())
                rotation = messages.set_admin_password_body(
                    vm_id=vm_id, request_id=rid, username=user, password=uuid.uuid4().hex
                )
                sent = send(client, host_id, rotation)
                done = outcome(client, vm_id, rid, 1, args.timeout)
                times["rotation"].append(time.monotonic() - sent)
                sent = send(client, host_id, rotation)
                outcome(client, vm_id, rid, 2, args.timeout)
                times["repeat"].append(time.monotonic() - sent)
                rid = str(uuid.uuid4())
                memory = 512 if i % 2 == 0 else 384
                sent = send(
                    client,
                    host_id,
                    messages.resize_vm_body(
                        vm_id=vm_id, request_id=rid, memory_mb=memory, vcpus=1, disk_gb=5 + i
                    ),
                )
                done = outcome(client, vm_id, rid, 1, args.timeout)
                times["resize"].append(time.monotonic() - sent)
                if done["type"] != "instance.command_done":
                    print(f"run {i}: resize {done}")
                rid = str(uuid.uuid4())
                sent = send(client, host_id, messages.restart_vm_body(vm_id=vm_id, request_id=rid))
                done = outcome(client, vm_id, rid, 1, args.timeout)
                times["restart"].append(time.monotonic() - sent)
                if done["type"] != "instance.command_done":
                    print(f"run {i}: {done}")
                print(
                    f"run {i}: "
                    + " ".join(f"{name}={values[-1]:.3f}s" for name, values in times.items())
                )
            client.call("delete-vm", {"vm-id": vm_id}, timeout=120)
    print(f"image={args.image} runs={args.runs}")
    for name, values in times.items():
        print(f"median {name:<9} (publish -> outcome event)  {statistics.median(values):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
