"""Webhook handling throughput and latency, against an empty Django view, in the same run.

Both endpoints are served by the same Django WSGI handler (in-process, through the full middleware
stack; no network), one request at a time, on a fresh database:

- empty:     a view that returns 200 (the floor: Django's own cost per POST);
- paid:      a signed checkout.session.completed for a new order (verify the signature, record the
             event, lock the order, create the instance and the create-vm outbox row, commit);
- replay:    the same event delivered again (verify, the unique insert fails, acknowledge);
- unhandled: a signed event of a type the shop ignores (verify, record).

Usage: .venv/bin/python bench/webhooks.py [-n 500] [--database-url postgres://...]
Default database: a temporary SQLite file. Logging is at WARNING so the console does not dominate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="requests per scenario")
    parser.add_argument("--database-url", default="", help="default: a temporary SQLite file")
    parser.add_argument("--sqlite-wal", action="store_true", help="SQLite in WAL journal mode")
    return parser.parse_args()


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "store.settings")
    os.environ["WARREN_LOG_LEVEL"] = "WARNING"
    # Django's test Client sends Host: testserver, no longer among the default allowed hosts.
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.ROOT_URLCONF = "bench_webhooks_urls"
    sys.modules["bench_webhooks_urls"] = _urlconf()
    call_command("migrate", verbosity=0)


def _urlconf():  # noqa: ANN202
    import types

    from django.http import HttpRequest, HttpResponse
    from django.urls import include, path
    from django.views.decorators.csrf import csrf_exempt
    from django.views.decorators.http import require_POST

    @csrf_exempt
    @require_POST
    def empty(request: HttpRequest) -> HttpResponse:
        return HttpResponse(status=200)

    module = types.ModuleType("bench_webhooks_urls")
    module.urlpatterns = [
        path("bench/empty/", empty),
        path("orders/", include("orders.web.urls")),
    ]
    return module


def measure(name: str, requests: list[tuple[str, bytes, str]], client) -> dict[str, float]:  # noqa: ANN001
    latencies = []
    started = time.perf_counter()
    for url, payload, signature in requests:
        t0 = time.perf_counter()
        response = client.post(
            url, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature
        )
        latencies.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise SystemExit(f"{name}: HTTP {response.status_code}")
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(requests) / elapsed,
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
    }


def main() -> None:
    args = parse_args()
    warnings.simplefilter("ignore")  # whitenoise: no collected static files in a bench run
    with tempfile.TemporaryDirectory() as tmp:
        setup_django(args.database_url or f"sqlite:///{Path(tmp) / 'bench.sqlite3'}")
        if args.sqlite_wal:
            from django.db import connection

            with connection.cursor() as cursor:  # persistent: stored in the database file
                cursor.execute("PRAGMA journal_mode=WAL")
        run(args.n)


def run(n: int) -> None:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from orders.models import Order, OutboxMessage
    from store.models import Plan
    from tests.stripe_signing import stripe_signature as sign

    secret = settings.STRIPE_WEBHOOK_SECRET
    user = get_user_model().objects.create_user(f"bench-{time.time_ns()}")
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
    orders = [Order.objects.create(user=user, plan=plan) for _ in range(n)]

    def event(event_type: str, obj: dict, event_id: str) -> bytes:
        return json.dumps(
            {
                "id": event_id,
                "object": "event",
                "type": event_type,
                "livemode": False,
                "created": int(time.time()),
                "data": {"object": obj},
            }
        ).encode()

    def paid(order: Order, k: int) -> bytes:
        ref = str(order.public_id)
        return event(
            "checkout.session.completed",
            {
                "id": f"cs_bench_{k}_{order.pk}",
                "object": "checkout.session",
                "mode": "subscription",
                "payment_status": "paid",
                "client_reference_id": ref,
                "metadata": {"order_id": ref},
                "customer": f"cus_bench_{order.pk}",
                "subscription": f"sub_bench_{order.pk}",
            },
            f"evt_bench_paid_{order.pk}",
        )

    hook, empty = "/orders/webhooks/stripe/", "/bench/empty/"
    paid_payloads = [paid(o, i) for i, o in enumerate(orders)]
    unhandled = [
        event("customer.created", {"id": f"cus_{i}"}, f"evt_bench_other_{i}_{time.time_ns()}")
        for i in range(n)
    ]
    scenarios: list[tuple[str, Callable[[], list[tuple[str, bytes, str]]]]] = [
        ("empty", lambda: [(empty, p, sign(p, secret)) for p in paid_payloads]),
        ("paid", lambda: [(hook, p, sign(p, secret)) for p in paid_payloads]),
        ("replay", lambda: [(hook, p, sign(p, secret)) for p in paid_payloads]),
        ("unhandled", lambda: [(hook, p, sign(p, secret)) for p in unhandled]),
    ]
    client = Client()
    # Warm-up: imports, URL resolver, connection.
    client.post(empty, data=b"{}", content_type="application/json")

    results = {name: measure(name, build(), client) for name, build in scenarios}
    assert OutboxMessage.objects.count() == n, "every paid order has exactly one create-vm row"

    journal = ""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            journal = f" (journal_mode={cursor.execute('PRAGMA journal_mode').fetchone()[0]})"
    print(
        f"database: {connection.vendor}{journal}, requests per scenario: {n}, sequential, in-process WSGI"
    )
    print(f"{'scenario':<10} {'req/s':>9} {'median ms':>10} {'p95 ms':>8} {'x empty (median)':>17}")
    base = results["empty"]["median_ms"]
    for name, r in results.items():
        print(
            f"{name:<10} {r['rps']:>9.0f} {r['median_ms']:>10.2f} {r['p95_ms']:>8.2f} "
            f"{r['median_ms'] / base:>17.1f}"
        )
    ratio = results["empty"]["rps"] / results["paid"]["rps"]
    print(f"ratio: empty view throughput / paid-webhook throughput = {ratio:.1f}")


if __name__ == "__main__":
    main()
