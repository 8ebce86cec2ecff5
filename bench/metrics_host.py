"""Metrics sampling cost on the host: CPU seconds per hour per VM spent by the daemon's sampler.

Runs `vmbackend.host.sampler.Sampler.sample_round` (the fetcher threads' HTTP calls and JSON parsing,
QEMU's /proc reads, building and encoding each instance.metrics body) and measures this process's
CPU time (`time.process_time`, every thread; the servers run in other processes) over many
rounds, against:

- `http`: a management-API look-alike in a separate process on 127.0.0.1
  (tests/vmbackend/management_server.py) answering RabbitMQ-sized JSON (overview ~4 KB, node
  ~8 KB, padded like a real node's answers), with `--vms` VMs per round;
- `tiny`: one real tiny-image VM (QEMU under this machine's accelerator), its stand-in answering.

Prints the median CPU milliseconds per sample over `--repeats` runs, and what that makes per VM and
hour at the default interval (30 s: 120 samples an hour). Publishing (one basic_publish of a
~700-byte body on the connection's thread) is not included.

    .venv/bin/python bench/metrics_host.py [--rounds 30] [--repeats 5] [--vms 10] [--skip-tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.net import free_port  # noqa: E402
from vmbackend.host import config  # noqa: E402
from vmbackend.host.registry import Registry  # noqa: E402
from vmbackend.host.sampler import Sampler  # noqa: E402
from vmbackend.host.state import READY, StateStore, VMRecord  # noqa: E402
from vmbackend.machine.qemu import UserNet, VMSpec  # noqa: E402
from vmbackend.machine.qemu_machine import QemuMachine  # noqa: E402
from vmbackend.protocol import messages  # noqa: E402

SAMPLES_PER_HOUR = 3600 / 30
SERVER = """
import json, sys, time
from tests.vmbackend.management_server import serve
overview, node = json.loads(sys.stdin.read())
with serve() as broker:
    broker.overview = overview
    broker.nodes = {"rabbit@bench": node}
    print(broker.port, flush=True)
    time.sleep(3600)
"""


def realistic_answers() -> tuple[dict, dict]:
    """An overview and a node answer of a real RabbitMQ's size (the fields the sampler reads,
    plus padding standing in for listeners, contexts, exchange types, applications...)."""
    overview = {
        "management_version": "4.0.5",
        "rabbitmq_version": "4.0.5",
        "erlang_version": "26.2.5",
        "node": "rabbit@bench",
        "queue_totals": {"messages": 40, "messages_ready": 30, "messages_unacknowledged": 10},
        "message_stats": {
            f"{k}_details": {"rate": 12.5} for k in ("publish", "deliver_get", "ack", "confirm")
        },
        "object_totals": {"connections": 5, "channels": 9, "consumers": 3, "queues": 4},
        "listeners": [
            {"node": "rabbit@bench", "protocol": p, "ip_address": "::", "port": 5672 + i}
            for i, p in enumerate(["amqp", "clustering", "http", "prometheus"] * 6)
        ],
        "exchange_types": [{"name": f"x-type-{i}", "description": "d" * 60} for i in range(12)],
    }
    node = {
        "name": "rabbit@bench",
        "mem_used": 150_000_000,
        "mem_limit": 400_000_000,
        "mem_alarm": False,
        "disk_free": 3_000_000_000,
        "disk_free_limit": 50_000_000,
        "disk_free_alarm": False,
        "uptime": 86_400_000,
        "applications": [
            {"name": f"app_{i}", "description": "an OTP application " * 3, "version": "1.2.3"}
            for i in range(60)
        ],
        "auth_mechanisms": [{"name": n, "enabled": True} for n in ("PLAIN", "AMQPLAIN")] * 10,
    }
    return overview, node


def sampler_for(targets: list[tuple[str, int, str, str]], pid: int) -> Sampler:
    """A Sampler over READY records (vm_id, management port, user, password)."""
    state = Path(tempfile.mkdtemp(prefix="wmb-"))
    cfg = config.load(
        env={"WARREN_HOST_ID": "bench", "WARREN_STATE_DIR": str(state), "WARREN_ACCEL": "auto"}
    )
    registry = Registry(cfg, StateStore(state))
    for vm_id, port, user, password in targets:
        registry.records[vm_id] = VMRecord(
            vm_id=vm_id,
            image="tiny",
            memory_mb=256,
            vcpus=1,
            disk_gb=1,
            hostname="bench",
            admin_username=user,
            admin_password=password,
            status=READY,
            ports={"management": port, "amqp": free_port()},
        )
    return Sampler(cfg, registry, lambda _vm: pid, lambda body: messages.encode_event(body))


def measure(sampler: Sampler, rounds: int, repeats: int) -> tuple[list[float], int]:
    """CPU ms per sample for each repeat, and how many samples were unreachable."""
    sampler.sample_round()  # warm up: imports, first connections, the CPU meter's first reading
    results, unreachable = [], 0
    for _ in range(repeats):
        before = time.process_time()
        samples = 0
        for _ in range(rounds):
            bodies = sampler.sample_round()
            samples += len(bodies)
            unreachable += sum(not body["reachable"] for body in bodies)
        results.append((time.process_time() - before) * 1000 / samples)
    return results, unreachable


def report(name: str, per_sample: list[float], unreachable: int, detail: str) -> None:
    median = statistics.median(per_sample)
    print(
        f"{name:5} {detail:34} CPU per sample median {median:6.2f} ms "
        f"(runs: {', '.join(f'{v:.2f}' for v in per_sample)}) -> "
        f"{median * SAMPLES_PER_HOUR / 1000:.3f} CPU s per VM per hour at 30 s; "
        f"unreachable samples: {unreachable}"
    )


def bench_http(rounds: int, repeats: int, vms: int) -> None:
    overview, node = realistic_answers()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(json.dumps([overview, node]))
        server.stdin.close()
        port = int(server.stdout.readline())
        sampler = sampler_for(
            [(str(uuid.uuid4()), port, "admin", "s3cret-pa55word") for _ in range(vms)],
            server.pid,  # stands in for QEMU: /proc is read for real
        )
        per_sample, unreachable = measure(sampler, rounds, repeats)
        detail = f"{vms} VMs x {rounds} rounds x {repeats} runs"
        report("http", per_sample, unreachable, detail)
        print(
            f"      answer sizes: overview {len(json.dumps(overview))} B, "
            f"node {len(json.dumps(node))} B"
        )
    finally:
        server.kill()
        server.wait()


def bench_tiny(rounds: int, repeats: int) -> None:
    from vmbackend.images import manifest, tiny

    root = manifest.default_images_root()
    tiny.build(root, progress=lambda _m: None)
    vm_id = uuid.uuid4().hex[:12]
    user, password = f"warren-{vm_id[:6]}", uuid.uuid4().hex
    port = free_port()
    spec = VMSpec(
        vm_id=vm_id,
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname=f"bench-{vm_id[:6]}",
        admin_user=user,
        admin_password=password,
        network=UserNet("127.0.0.1", port, free_port()),
    )
    work = Path(tempfile.mkdtemp(prefix="wmb-"))
    machine = QemuMachine(spec, work / vm_id, root)
    try:
        machine.launch(allow_restore=False)
        machine.wait_management(machine.management_url(), time.monotonic() + 180)
        assert machine.pid is not None
        sampler = sampler_for([(str(uuid.uuid4()), port, user, password)], machine.pid)
        per_sample, unreachable = measure(sampler, rounds, repeats)
        report("tiny", per_sample, unreachable, f"1 VM x {rounds} rounds x {repeats} runs")
    finally:
        machine.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--skip-tiny", action="store_true")
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} CPUs; CPU time of this process (all its threads)")
    bench_http(args.rounds, args.repeats, args.vms)
    if not args.skip_tiny:
        bench_tiny(max(5, args.rounds // 3), args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
