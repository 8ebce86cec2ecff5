"""A fleet under load (issue 14): many simulated hosts, 1000 paid orders, one host killed.

What runs, all real except the machines:
- `--hosts` host daemons (`python -m vmbackend daemon`, one process each) with the simulated
  machine driver (WARREN_DRIVER=simulated: VMs are records moving through the real states, boot
  time uniform in `--boot` seconds, `--failure-rate` of boots failing) and mixed capacities
  (memory 16/32/32 GiB, 6/8/10 cores x4 overcommit, 200-300 GB disk: ~14 % more memory
  and ~20 % more vCPUs than the orders need);
- the real broker (a vhost of its own, made and removed with rabbitmqctl);
- the shop's real relay (`manage.py relay_outbox`: placement) and event worker
  (`manage.py consume_events`: events, silent hosts, evacuation after `--evacuate-after` s);
- `--orders` paid orders of mixed plans (512 MiB/1 vCPU/4 GB, 1 GiB/1/8, 2 GiB/2/16), made
  through `request_provisioning` (the payment webhook's service) in one burst.

Checked: no heartbeat ever reports a host over any of its totals (the bench's own queue sees
every heartbeat), every vm-id accepted by exactly one host, every order ends ready, failed (the
simulated failure rate; the customer is told) or waiting for room (told), and the VMs of the host
killed (SIGKILL) at `--kill-at` (share of orders ready) end on other hosts.

Printed: seconds from the burst to every order placed (accepted by a host) and to every order
settled, placements per second, declines, and the checks' results.

Usage: .venv/bin/python bench/fleet.py [--hosts 50] [--orders 1000] [--boot 1-4]
       [--failure-rate 0.01] [--kill-at 0.5] [--database-url postgres://...]
(default database: a temporary SQLite file). Broker: WARREN_BENCH_AMQP (default
amqp://guest:guest@127.0.0.1:5672).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
PLANS = (("bunny", 512, 1, 4), ("hare", 1024, 1, 8), ("warren", 2048, 2, 16))
HOST_SHAPES = ((16384, 6, 200), (32768, 8, 300), (32768, 10, 300))  # MiB, cores, GB
RESOURCES = (("memory_used_mb", "memory_total_mb"), ("vcpus_used", "vcpus_total"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--boot", default="1-4", help="simulated boot seconds, low-high")
    parser.add_argument("--failure-rate", type=float, default=0.01)
    parser.add_argument("--kill-at", type=float, default=0.5, help="share ready; 0: no kill")
    parser.add_argument("--evacuate-after", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--database-url", default="")
    return parser.parse_args()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class Observer(threading.Thread):
    """The bench's own queue on warren.events: every heartbeat and instance event."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.lock = threading.Lock()
        self.accepted: dict[str, set[str]] = collections.defaultdict(set)
        self.first_accept: dict[str, float] = {}
        self.over: list[dict[str, Any]] = []
        self.heartbeats = 0
        self.declined = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = conn.channel()
        channel.exchange_declare("warren.events", exchange_type="topic", durable=True)
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "warren.events", routing_key="#")
        self.ready.set()
        for method, _props, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.5):
            if self.stop.is_set():
                break
            if method is None:
                continue
            self.see(json.loads(body))
        conn.close()

    def see(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        with self.lock:
            self.counts[kind] += 1
            if kind == "host.heartbeat":
                self.heartbeats += 1
                for used, total in RESOURCES:
                    if event.get(total) and event.get(used, 0) > event[total]:
                        self.over.append(event)
            elif kind == "instance.accepted":
                vm_id = event["instance_id"]
                self.accepted[vm_id].add(event["host_id"])
                self.first_accept.setdefault(vm_id, time.monotonic())
            elif kind == "instance.declined":
                self.declined += 1


def start_daemon(i: int, url: str, state: Path, args: argparse.Namespace) -> subprocess.Popen:
    memory, cores, disk = HOST_SHAPES[i % len(HOST_SHAPES)]
    env = dict(os.environ)
    env.update(
        {
            "WARREN_HOST_ID": f"fleet-{i:03d}",
            "WARREN_AMQP_URL": url,
            "WARREN_STATE_DIR": str(state / f"h{i:03d}"),
            "WARREN_DRIVER": "simulated",
            "WARREN_SIM_BOOT_SECONDS": args.boot,
            "WARREN_SIM_FAILURE_RATE": str(args.failure_rate),
            "WARREN_CAPACITY": "1000",
            "WARREN_HOST_MEMORY_MB": str(memory),
            "WARREN_HOST_CPUS": str(cores),
            "WARREN_CPU_OVERCOMMIT": "4",
            "WARREN_HOST_DISK_GB": str(disk),
            "WARREN_HEARTBEAT_INTERVAL": "2",
            "WARREN_METRICS_INTERVAL": "0",
            "WARREN_LOG_LEVEL": "WARNING",
            # The bench's shop logs in as the shared development user (docs/security.md).
            "WARREN_COMMAND_SENDERS": "guest",
        }
    )
    log = open(state / f"h{i:03d}.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "vmbackend", "daemon"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def start_shop(command: str, env: dict[str, str], state: Path) -> subprocess.Popen:
    log = open(state / f"{command}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "manage.py", command],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def setup_django(database_url: str, env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "store.settings")
    os.environ.setdefault("WARREN_BROKER_SHARED_USER", "guest")  # every host logs in as guest
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_orders(n: int) -> list[str]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from orders.core.provisioning import request_provisioning
    from orders.models import Order
    from store.models import Plan

    plans = [
        Plan.objects.create(
            slug=slug,
            name=slug.title(),
            memory_mb=memory,
            vcpus=vcpus,
            disk_gb=disk,
            max_connections=100,
            max_queues=100,
            monthly_price_cents=900,
        )
        for slug, memory, vcpus, disk in PLANS
    ]
    user = get_user_model().objects.create_user(f"bench-{uuid.uuid4().hex[:8]}")
    vm_ids = []
    for i in range(n):
        with transaction.atomic():
            order = Order.objects.create(user=user, plan=plans[i % len(plans)])
            order = Order.objects.select_for_update().get(pk=order.pk)
            instance = request_provisioning(order=order)
            assert instance is not None
            vm_ids.append(instance.vm_id)
    return vm_ids


def states() -> collections.Counter[str]:
    from orders.models import Order

    return collections.Counter(Order.objects.values_list("status", flat=True))


def main() -> int:
    args = parse_args()
    base = os.environ.get("WARREN_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
    vhost = f"warren-bench-fleet-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = f"{base}/{quote(vhost, safe='')}"
    state = Path(tempfile.mkdtemp(prefix="wfleet-"))
    database_url = args.database_url or f"sqlite:///{state / 'db.sqlite3'}"
    shop_env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WARREN_AMQP_URL": url,
        "WARREN_LOG_LEVEL": "WARNING",
        "WARREN_HOST_HEARTBEAT_TIMEOUT": "10",
        "WARREN_HOST_EVACUATE_AFTER": str(args.evacuate_after),
        "WARREN_PLACEMENT": "pack",
        "WARREN_SECRETS_KEYS": Fernet.generate_key().decode(),  # the shop's check needs one
    }
    setup_django(database_url, shop_env)
    observer = Observer(url)
    observer.start()
    observer.ready.wait(30)
    daemons = [start_daemon(i, url, state, args) for i in range(args.hosts)]
    shop = [start_shop(c, shop_env, state) for c in ("relay_outbox", "consume_events")]
    killed = None
    try:
        from orders.models import Host, Instance, Order

        deadline = time.monotonic() + 180
        while Host.objects.filter(memory_total_mb__gt=0).count() < args.hosts:
            if time.monotonic() > deadline:
                raise SystemExit("the hosts' heartbeats did not all arrive in 180 s")
            if any(p.poll() is not None for p in shop):
                raise SystemExit(f"the relay or the event worker stopped: see {state}")
            time.sleep(1)
        print(
            f"{args.hosts} hosts up (one daemon process each); making {args.orders} orders",
            flush=True,
        )
        t0 = time.monotonic()
        originals = make_orders(args.orders)
        t_made = time.monotonic() - t0
        settled = {Order.Status.READY, Order.Status.FAILED}
        t_placed = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            time.sleep(1)
            counts = states()
            ready = counts.get(Order.Status.READY, 0)
            with observer.lock:
                accepted = sum(1 for vm in originals if vm in observer.accepted)
                if t_placed is None and accepted >= args.orders:
                    t_placed = max(observer.first_accept[vm] for vm in originals) - t0
            if killed is None and args.kill_at and ready >= args.kill_at * args.orders:
                victim = daemons[1]
                victim.send_signal(signal.SIGKILL)
                killed = ("fleet-001", time.monotonic() - t0)
                on_victim = Instance.objects.filter(host_id="fleet-001").count()
                print(f"t={killed[1]:.1f}s killed fleet-001 (SIGKILL) with {on_victim} VMs")
            waiting = Instance.objects.filter(
                status=Instance.Status.REQUESTED, unplaced_since__isnull=False
            ).count()
            done = sum(counts.get(s, 0) for s in settled)
            print(
                f"t={time.monotonic() - t0:.0f}s ready={ready} accepted={accepted} "
                f"waiting_for_room={waiting} {dict(counts)}",
                flush=True,
            )
            moved = (
                killed is None
                or not Instance.objects.filter(host_id=killed[0], status__in=Instance.LIVE).exists()
            )
            if done + waiting >= args.orders and moved:
                break
        t_all = time.monotonic() - t0
        report(args, observer, t_made, t_placed, t_all, killed, originals)
    finally:
        for proc in [*shop, *daemons]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*shop, *daemons]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        observer.stop.set()
        rabbitmqctl("delete_vhost", vhost)
        print(f"logs and state: {state}")
    return 0


def report(args, observer, t_made, t_placed, t_all, killed, originals) -> None:  # noqa: ANN001
    from orders.models import Activity, Instance, Order

    with observer.lock:
        twice = {vm: hosts for vm, hosts in observer.accepted.items() if len(hosts) > 1}
        accepted = len(observer.accepted)
        over, heartbeats, declined = list(observer.over), observer.heartbeats, observer.declined
    counts = states()
    ours = set(Instance.objects.values_list("public_id", flat=True))
    print("--- fleet bench ---")
    print(f"hosts={args.hosts} (one daemon process each) orders={args.orders} boot={args.boot}s")
    print(f"orders made (paid) in {t_made:.1f}s")
    with observer.lock:
        placed = [observer.first_accept[vm] for vm in originals if vm in observer.first_accept]
    if t_placed is not None:
        print(f"time to place all: {t_placed:.1f}s -> {args.orders / t_placed:.1f} placements/s")
    else:
        print(f"placed {len(placed)} of {args.orders} first vm-ids (the rest: waiting for room)")
    print(f"time to settle all: {t_all:.1f}s; declines: {declined}")
    print(f"final order states: {dict(counts)}")
    print(
        f"vm-ids accepted: {accepted} ({args.orders} first ones + re-created ones); "
        f"accepted by more than one host: {len(twice)}"
    )
    waiting = Instance.objects.filter(
        status=Instance.Status.REQUESTED, unplaced_since__isnull=False
    ).count()
    print(f"paid orders waiting for room (told on their page, flagged for staff): {waiting}")
    print(f"heartbeats seen: {heartbeats}; reporting a host over capacity: {len(over)}")
    if killed:
        left = Instance.objects.filter(host_id=killed[0], status__in=Instance.LIVE).count()
        moved = Activity.objects.filter(kind=Activity.Kind.LOST).count()
        print(
            f"killed {killed[0]} at t={killed[1]:.1f}s: re-created elsewhere {moved}, left {left}"
        )
    failed_told = Order.objects.filter(status=Order.Status.FAILED).exclude(
        instance__failure_reason=""
    )
    print(f"failed orders with a reason shown: {failed_told.count()}")
    print(f"current vm-ids all known to the shop: {len(ours)}")


if __name__ == "__main__":
    raise SystemExit(main())
