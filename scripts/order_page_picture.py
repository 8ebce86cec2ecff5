"""Take the README's picture of the order page (docs/img/order-page.png) with Playwright.

Starts the shop (gunicorn, as `warren run` does) on a fresh SQLite database in a temporary
folder, seeds the demo plans and one customer whose Bunny server is ready (as the event worker
leaves it after `instance.ready`, with an hour of metrics samples), logs in with headless
Chromium and photographs the order page. Nothing here talks to a broker or a VM.

    .venv/bin/python scripts/order_page_picture.py [--out docs/img/order-page.png]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import chromium  # noqa: E402
from tests.net import free_port  # noqa: E402
from warren.run import Options, service_commands  # noqa: E402

USER, PASSWORD = "ada", "a-long-demo-passphrase-42"
WIDTH, HEIGHT = 900, 1200
MAX_BYTES = 200 * 1024


def seed() -> str:
    """A ready Bunny order for USER; returns the order's public id."""
    import django

    django.setup()
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import transaction
    from django.utils import timezone

    from orders.core.activity import record
    from orders.core.provisioning import request_provisioning
    from orders.models import Activity, MetricSample, Order
    from store.models import Plan

    call_command("migrate", "--noinput", verbosity=0)
    call_command("seed_plans", verbosity=0)
    user = get_user_model().objects.create_user(USER, "ada@example.com", PASSWORD)
    paid = timezone.now() - timedelta(hours=1)
    order = Order.objects.create(user=user, plan=Plan.objects.get(slug="bunny"), created_at=paid)
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        instance = request_provisioning(order=locked, paid_at=paid)
    assert instance is not None
    ready = paid + timedelta(seconds=1)
    instance.__class__.objects.filter(pk=instance.pk).update(
        status="ready",
        host_id="host-1",
        management_url="https://127.0.0.1:15671/",
        amqp_url=f"amqps://{instance.admin_username}@127.0.0.1:5671/",
        ready_at=ready,
        rabbitmq_version="4.0.9",
        erlang_version="26.2.5",
        node_name="rabbit@vm-a473236b",
        runtime_at=ready,
    )
    Order.objects.filter(pk=order.pk).update(status="ready")
    Activity.objects.filter(order=order).update(at=paid)
    record(order=order, kind=Activity.Kind.READY, message="Your server is ready.", at=ready)
    samples = []
    for minute in range(60):
        wave = (minute % 20) / 20
        samples.append(
            MetricSample(
                instance=instance,
                at=paid + timedelta(minutes=minute),
                reachable=True,
                messages_ready=int(400 * wave),
                messages_unacked=int(40 * wave),
                publish_rate=120.0 + 80 * wave,
                deliver_rate=118.0 + 75 * wave,
                ack_rate=118.0 + 75 * wave,
                connections=4,
                channels=8,
                consumers=4,
                queues=3,
                mem_used=int((110 + 30 * wave) * 2**20),
                mem_limit=int(204.8 * 2**20),
                disk_free=int(3.1 * 2**30),
                disk_free_limit=50 * 2**20,
                mem_alarm=False,
                disk_alarm=False,
                uptime_s=minute * 60,
                cpu_percent=6.0 + 10 * wave,
                rss_bytes=int(420 * 2**20),
            )
        )
    MetricSample.objects.bulk_create(samples)
    return str(order.public_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "order-page.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="warren-picture-") as tmp:
        port = free_port()
        os.environ.update(
            DATABASE_URL=f"sqlite:///{Path(tmp) / 'db.sqlite3'}",
            DJANGO_SETTINGS_MODULE="store.settings",
            DJANGO_DEBUG="0",
            STRIPE_SECRET_KEY="",
            WARREN_SITE_URL=f"http://127.0.0.1:{port}",
            # The root the order page offers for download: any PEM will do for the picture.
            WARREN_CA_CERT=str(demo_ca(Path(tmp))),
        )
        order_id = seed()
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
            cwd=ROOT,
            check=True,
        )
        web = subprocess.Popen(
            service_commands(Options(port=port, web_workers=1))["web"],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(base)
            with chromium(Path(tmp) / "profile") as browser:
                page = browser.pages[0] if browser.pages else browser.new_page()
                page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
                page.goto(f"{base}/accounts/login/")
                page.fill("#id_username", USER)
                page.fill("#id_password", PASSWORD)
                page.click("button[type=submit]")
                page.goto(f"{base}/orders/{order_id}/")
                page.wait_for_selector("#management-url")
                page.wait_for_timeout(1000)  # the charts draw
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=False)
        finally:
            web.terminate()
            web.wait(timeout=20)
    size = args.out.stat().st_size
    print(f"{args.out}: {size // 1024} KiB")
    return 0 if size < MAX_BYTES else 1


def demo_ca(folder: Path) -> Path:
    from vmbackend.tls import authority

    authority.init_ca(folder / "ca")
    return folder / "ca" / authority.ROOT_CERT


def wait_for(url: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if requests.get(url + "/", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


if __name__ == "__main__":
    sys.exit(main())
