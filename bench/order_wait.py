"""How soon a waiting order page hears of "ready" (issue 13: within about 100 ms).

A status request long-polls (`orders:status?since=<version>`, orders/web/order_wait.py) in a thread
through Django's test client; the main thread then applies a real `instance.ready` through the
event worker's entry point (`host_events.handle_message`, one transaction). Measured: from that
call's start to the long poll's answer (the event's own transaction included), median of
`--runs`, with the page's 2 s re-read switched off so only the wake-up can answer. Also the bare
wake-up: `wakeup.notify` outside a transaction to a `Listener`'s return.

Usage: .venv/bin/python bench/order_wait.py [--runs 20] [--database-url postgres://...]
       (default: a temporary SQLite file, WAL like production)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "store.settings")
    os.environ.setdefault("WARREN_LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def one_round(n: int) -> float:
    from django.conf import settings
    from django.db import connection, transaction
    from django.test import Client

    from orders.core.provisioning import request_provisioning
    from orders.models import Instance, Order
    from orders.web import order_wait
    from orders.web.orders import _state_context
    from store.models import Plan
    from tests.orders.console_support import apply, ready_fields
    from vmbackend.protocol import messages

    user = __import__("django.contrib.auth", fromlist=["get_user_model"]).get_user_model()
    customer = user.objects.create_user(f"wait{n}-{time.time_ns()}", "w@example.com", "x-pass-1234")
    order = Order.objects.create(user=customer, plan=Plan.objects.get(slug="bunny"))
    with transaction.atomic():
        instance = request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))
    assert instance is not None
    apply(instance, messages.INSTANCE_ACCEPTED, image="tiny")
    since = _state_context(Order.objects.get(pk=order.pk))["version"]
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    settings.ORDER_LONG_POLL_SECONDS = 30.0
    order_wait.RECHECK_SECONDS = 30.0
    answered: list[float] = []

    def wait() -> None:
        client = Client()
        client.force_login(customer)
        response = client.get(f"/orders/{order.public_id}/status/", {"since": since})
        answered.append(time.monotonic())
        assert response.status_code == 200, response.status_code
        assert response.json()["status"] == "ready", response.json()
        connection.close()

    waiter = threading.Thread(target=wait)
    waiter.start()
    while order_wait.waiting() == 0:
        time.sleep(0.005)
    time.sleep(0.05)  # it is inside its wait now
    started = time.monotonic()
    assert (
        apply(
            Instance.objects.get(pk=instance.pk), messages.INSTANCE_READY, **ready_fields(instance)
        )
        == "applied"
    )
    waiter.join(timeout=60)
    return answered[0] - started


def bare_wakeup() -> float:
    from orders.lib import wakeup

    with wakeup.Listener(wakeup.ORDERS) as listener:
        started = time.monotonic()
        wakeup.notify(wakeup.ORDERS, "bench")
        assert listener.wait(10.0) == ["bench"]
        return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    tmp = tempfile.mkdtemp(prefix="wwait-")
    url = args.database_url or f"sqlite:///{tmp}/shop.sqlite3"
    setup_django(url)
    from store.management.commands.seed_plans import seed_plans

    seed_plans()
    bare = [bare_wakeup() for _ in range(args.runs)]
    pages = [one_round(n) for n in range(args.runs)]
    vendor = __import__("django.db", fromlist=["connection"]).connection.vendor
    print(f"database={vendor} runs={args.runs}")
    print(
        f"  wake-up alone (notify -> listener):        median {statistics.median(bare) * 1000:6.1f} ms, max {max(bare) * 1000:6.1f} ms"
    )
    print(
        f"  ready event applied -> long poll answered: median {statistics.median(pages) * 1000:6.1f} ms, max {max(pages) * 1000:6.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
