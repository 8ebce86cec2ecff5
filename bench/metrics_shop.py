"""The shop's cost of metrics (issue 12): bytes per instance per day, and the event worker's pace.

1. Storage: one instance's day of 30 s samples (2880) through `metrics.apply_metrics` (the
   worker's path: store + alarm evaluation), then the day's roll-up (288 5-minute rows). Table
   sizes with their indexes: SQLite's dbstat (pages of the table and its indexes) or PostgreSQL's
   pg_total_relation_size after VACUUM. Steady state per instance = a day of raw points (kept
   24 h) + 30 days of roll-ups.
2. Worker: 500 ready instances, each reporting every 30 s: `--rounds` rounds of 500
   instance.metrics events (built with messages.metrics_event) are published into a vhost of
   their own on the real broker, then one EventConsumer drains them (`run(once=True)`); applied
   events per second = events / (drain time - the idle timeout that ends it). Needed: 500 / 30 s
   = 16.7 events/s. Median of `--runs`.
3. The periodic job: rollup_and_prune for one 5-minute bucket of 500 instances (5000 points).

Usage: .venv/bin/python bench/metrics_shop.py [--runs 3] [--rounds 4] [--instances 500]
       [--database-url postgres://...]   (default: a temporary SQLite file, WAL like production)
The broker: WARREN_BENCH_AMQP (default amqp://guest:guest@127.0.0.1:5672, vhost made and removed
with rabbitmqctl). Logging at WARNING.
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
import warnings
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
INTERVAL_S = 30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4, help="samples per instance per run")
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--database-url", default="", help="default: a temporary SQLite file")
    return parser.parse_args()


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "store.settings")
    os.environ.setdefault("WARREN_BROKER_SHARED_USER", "guest")  # the bench publishes as guest
    os.environ["WARREN_LOG_LEVEL"] = "WARNING"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_instances(n: int, host: str) -> list:  # noqa: ANN001
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from orders.models import Instance, Order
    from store.models import Plan

    user = get_user_model().objects.create_user(f"bench-{uuid.uuid4().hex[:8]}")
    plan, _ = Plan.objects.get_or_create(
        slug="bench",
        defaults={
            "name": "Bench",
            "memory_mb": 512,
            "disk_gb": 4,
            "max_connections": 100,
            "max_queues": 100,
            "monthly_price_cents": 900,
        },
    )
    now = timezone.now()
    orders = Order.objects.bulk_create(
        [Order(user=user, plan=plan, status="ready", paid_at=now) for _ in range(n)]
    )
    return Instance.objects.bulk_create(
        [
            Instance(order=o, status="ready", host_id=host, ready_at=now, admin_username="warren-b")
            for o in orders
        ]
    )


def sample(i: int):  # noqa: ANN201
    from vmbackend.protocol.messages import Metrics

    return Metrics(
        reachable=True,
        messages_ready=1000 + i % 500,
        messages_unacked=i % 7,
        publish_rate=120.5 + i % 10,
        deliver_rate=118.25,
        ack_rate=118.0,
        connections=12 + i % 3,
        channels=24,
        consumers=6,
        queues=8,
        mem_used=150_000_000 + i * 1000,
        mem_limit=429_496_729,
        disk_free=3_500_000_000 - i * 1000,
        disk_free_limit=50_000_000,
        mem_alarm=False,
        disk_alarm=False,
        uptime_s=86_400 + i * INTERVAL_S,
        cpu_percent=3.25 + i % 5,
        rss_bytes=440_000_000 + i,
    )


def table_bytes(tables: list[str]) -> dict[str, int]:
    """Bytes of each table with its indexes."""
    from django.db import connection

    sizes = {}
    with connection.cursor() as cursor:
        for table in tables:
            if connection.vendor == "postgresql":
                cursor.execute(f"VACUUM {table}")  # noqa: S608 - our own table names
                cursor.execute("SELECT pg_total_relation_size(%s)", [table])
            else:
                cursor.execute(
                    "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = %s OR name IN "
                    "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = %s)",
                    [table, table],
                )
            sizes[table] = int(cursor.fetchone()[0])
    return sizes


def bench_storage() -> dict[str, float]:
    from django.db import connection
    from django.utils import timezone

    from orders.monitoring import metrics
    from orders.monitoring.metrics import bucket_start

    connection.ensure_connection()
    if connection.vendor == "postgresql":
        connection.connection.autocommit = True  # VACUUM outside a transaction
    tables = ["orders_metricsample", "orders_metricrollup"]
    before = table_bytes(tables)
    (instance,) = make_instances(1, "host-storage")
    start = bucket_start(timezone.now() - timedelta(days=3))
    per_day = 86_400 // INTERVAL_S
    began = time.perf_counter()
    for i in range(per_day):
        metrics.apply_metrics(
            instance_id=instance.public_id,
            host_id="host-storage",
            at=start + timedelta(seconds=INTERVAL_S * i),
            metrics=sample(i),
        )
    apply_s = time.perf_counter() - began
    # Roll the whole day up (rollup() starts 24 h before `now`).
    metrics.rollup(start + timedelta(days=1) + metrics.ROLLUP_GRACE)
    after = table_bytes(tables)
    raw = after["orders_metricsample"] - before["orders_metricsample"]
    rolled = after["orders_metricrollup"] - before["orders_metricrollup"]
    return {
        "samples": per_day,
        "rollups": metrics.MetricRollup.objects.filter(instance=instance).count(),
        "raw_bytes_per_day": raw,
        "rollup_bytes_per_day": rolled,
        "steady_state_bytes": raw + 30 * rolled,
        "apply_ms_per_sample": apply_s / per_day * 1000,
    }


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def bench_worker(instances: list, rounds: int, run: int, url: str) -> tuple[int, float]:  # noqa: ANN001
    """Publish rounds × instances samples, drain them with one EventConsumer; (events, seconds)."""
    import pika
    from django.utils import timezone

    from orders.messaging import broker
    from orders.messaging.consumer import EventConsumer
    from vmbackend.protocol import messages, topology

    conn = broker.connect(url)
    channel = conn.channel()
    broker.declare_topology(channel)
    channel.queue_purge(topology.EVENTS_STORE_QUEUE)
    # Each run its own past 30-second slots: never a duplicate of an earlier run's sample.
    base = timezone.now() - timedelta(hours=2) + timedelta(seconds=run * rounds * INTERVAL_S)
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2, user_id="guest")
    for r in range(rounds):
        at = (base + timedelta(seconds=r * INTERVAL_S)).isoformat()
        for k, instance in enumerate(instances):
            body = messages.metrics_event(
                instance_id=str(instance.public_id), host_id="host-bench", metrics=sample(k + r)
            )
            body["occurred_at"] = at
            channel.basic_publish(
                "warren.events", messages.INSTANCE_METRICS, json.dumps(body).encode(), props
            )
    conn.close()
    idle = 0.5
    consumer = EventConsumer(url=url, idle_timeout=idle, maintenance_interval=10**9)
    consumer.last_maintenance = time.monotonic()  # the periodic job is measured on its own
    began = time.perf_counter()
    counts = consumer.run(once=True)
    elapsed = time.perf_counter() - began - idle
    events = rounds * len(instances)
    if counts.get("recorded") != events:
        raise SystemExit(f"expected {events} recorded, got {counts}")
    return events, elapsed


def bench_job(instances: list) -> float:  # noqa: ANN001
    """rollup_and_prune for one new 5-minute bucket of every instance (10 points each)."""
    from django.utils import timezone

    from orders.models import MetricRollup, MetricSample
    from orders.monitoring import metrics

    bucket = metrics.bucket_start(timezone.now() - timedelta(minutes=20))
    rows = [
        metrics.build_sample(inst, bucket + timedelta(seconds=INTERVAL_S * i), sample(i))
        for inst in instances
        for i in range(10)
    ]
    MetricSample.objects.bulk_create(rows, batch_size=2000, ignore_conflicts=True)
    MetricRollup.objects.filter(bucket__gte=bucket - metrics.BUCKET).delete()
    MetricRollup.objects.create(  # the watermark: everything before this bucket is done
        instance=instances[0], bucket=bucket - metrics.BUCKET, samples=0, reachable_samples=0
    )
    began = time.perf_counter()
    written = metrics.rollup(bucket + metrics.BUCKET + metrics.ROLLUP_GRACE)
    elapsed = time.perf_counter() - began
    assert written == len(instances), written
    return elapsed


def main() -> None:
    args = parse_args()
    warnings.simplefilter("ignore")
    amqp = os.environ.get("WARREN_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
    vhost = f"warren-bench-metrics-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        setup_django(args.database_url or f"sqlite:///{Path(tmp) / 'bench.sqlite3'}")
        from django.db import connection

        print(f"database: {connection.vendor}")
        storage = bench_storage()
        print(
            "storage, one instance, one day of 30 s samples: "
            f"{storage['samples']} raw rows = {storage['raw_bytes_per_day'] / 1024:.0f} KiB "
            f"({storage['raw_bytes_per_day'] / storage['samples']:.0f} B/row), "
            f"{storage['rollups']} roll-ups = {storage['rollup_bytes_per_day'] / 1024:.1f} KiB; "
            f"steady state (24 h raw + 30 d roll-ups) = "
            f"{storage['steady_state_bytes'] / 2**20:.2f} MiB per instance; "
            f"apply {storage['apply_ms_per_sample']:.2f} ms/sample (single, no broker)"
        )
        rabbitmqctl("add_vhost", vhost)
        try:
            rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            url = f"{amqp}/{quote(vhost, safe='')}"
            instances = make_instances(args.instances, "host-bench")
            rates = []
            for run in range(args.runs):
                events, seconds = bench_worker(instances, args.rounds, run, url)
                rates.append(events / seconds)
                print(
                    f"worker run {run + 1}: {events} events in {seconds:.2f} s = {rates[-1]:.0f}/s"
                )
            need = args.instances / INTERVAL_S
            median = statistics.median(rates)
            print(
                f"worker: median {median:.0f} applied events/s over {args.runs} runs; "
                f"{args.instances} instances every {INTERVAL_S} s need {need:.1f}/s "
                f"({median / need:.0f}x headroom)"
            )
            jobs = [bench_job(instances) for _ in range(args.runs)]
            print(
                f"roll-up of one 5-minute bucket of {args.instances} instances "
                f"({args.instances * 10} points): median {statistics.median(jobs) * 1000:.0f} ms"
            )
        finally:
            rabbitmqctl("delete_vhost", vhost)


if __name__ == "__main__":
    main()
