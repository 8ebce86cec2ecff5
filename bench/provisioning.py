"""Seconds from the payment webhook to a working management URL, through the whole system.

Runs the real processes (web, relay, event worker, host daemon) as `python -m warren run` does,
against a private RabbitMQ vhost, and for each order measures from the signed
checkout.session.completed POST until the order page shows a management URL that answers
/api/overview with the credentials the page reveals. Cold boots and restores from the saved state
run in the same invocation; prints medians and the cold/restore ratio.

    .venv/bin/python bench/provisioning.py [--image rabbitmq-4.0] [--cold 1] [--restore 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import System, wait_until  # noqa: E402
from vmbackend.images import manifest  # noqa: E402


def private_vhost() -> tuple[str, str]:
    vhost = f"warren-bench-{uuid.uuid4().hex[:8]}"
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)
    return vhost, f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def one_order(system: System, n: int) -> float:
    user = f"bench{n}"
    system.create_customer(user, "bench-passphrase-123")
    session = system.login(user, "bench-passphrase-123")
    order_id = system.buy(session, "bunny")
    event = system.checkout_completed_event(order_id)
    started = time.monotonic()
    assert system.post_webhook(event).status_code == 200

    def working_url() -> bool:
        match = re.search(
            r'id="management-url" href="([^"]+)"', system.order_page(session, order_id)
        )
        if not match:
            return False
        creds = system.reveal_credentials(session, order_id)
        resp = requests.get(
            match.group(1) + "api/overview", auth=(creds["username"], creds["password"]), timeout=5
        )
        return resp.status_code == 200

    wait_until(working_url, 900, f"order {order_id} to work", interval=0.2, system=system)
    elapsed = time.monotonic() - started
    system.cancel(session, order_id)
    wait_until(
        lambda: system.order_status(session, order_id)["status"] == "deleted",
        120,
        "the VM to be deleted",
        system=system,
    )
    return elapsed


def measure(image: str, restore: bool, runs: int, amqp_url: str, images_root: Path) -> list[float]:
    workdir = Path(tempfile.mkdtemp(prefix="wbench-"))
    system = System(
        workdir,
        amqp_url,
        images_root,
        image=image,
        extra_env={"WARREN_RESTORE": "1" if restore else "0"},
    )
    try:
        system.prepare()
        system.start_all()
        times = []
        for n in range(runs):
            seconds = one_order(system, n)
            print(
                f"  {'restore' if restore else 'cold':7} run {n + 1}: {seconds:6.1f} s", flush=True
            )
            times.append(seconds)
        return times
    finally:
        system.stop_all()
        for pid in system.qemu_pids():
            system.kill_pid(pid)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", default="rabbitmq-4.0")
    parser.add_argument(
        "--cold", type=int, default=1, help="cold-boot orders (each ~2 min under TCG)"
    )
    parser.add_argument("--restore", type=int, default=3, help="orders served from the saved state")
    args = parser.parse_args()
    images_root = manifest.default_images_root()
    manifest.load(images_root, args.image)  # fails clearly when `make images` has not run
    vhost, amqp_url = private_vhost()
    try:
        cold = measure(args.image, False, args.cold, amqp_url, images_root) if args.cold else []
        fast = (
            measure(args.image, True, args.restore, amqp_url, images_root) if args.restore else []
        )
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60
        )
    print(f"\npayment webhook -> working management URL, image={args.image}")
    if cold:
        print(f"  cold boot: median {statistics.median(cold):6.1f} s  (n={len(cold)})")
    if fast:
        print(f"  restore:   median {statistics.median(fast):6.1f} s  (n={len(fast)})")
    if cold and fast:
        print(f"  ratio cold/restore: {statistics.median(cold) / statistics.median(fast):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
