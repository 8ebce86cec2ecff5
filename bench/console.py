"""The customer's console end to end: seconds from the confirming POST on the order page to the
outcome the owner sees there, for a password rotation (until the page offers the new password)
and a restart (until the timeline says it is done), through the real shop, relay, event worker,
host daemon and a VM (tiny image by default; any image the daemon knows with --image).

Runs the whole system as tests/e2e/harness.py does, against a private vhost on the local
RabbitMQ (created and removed here) and the images in ~/.cache/warren/images. Prints each round
and the medians; the page is polled every 0.2 s, so a number is at most that much late.

    .venv/bin/python bench/console.py [--rounds 5] [--image tiny]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.harness import System, wait_until  # noqa: E402
from tests.e2e.test_console_flow import _console, _management_url  # noqa: E402
from vmbackend.images import manifest  # noqa: E402


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image", default="tiny")
    args = parser.parse_args()

    vhost = f"warren-bench-console-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    workdir = Path(tempfile.mkdtemp(prefix="wbc-"))
    system = System(
        workdir,
        f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}",
        manifest.default_images_root(),
        image=args.image,
    )
    rotations: list[float] = []
    restarts: list[float] = []
    try:
        system.prepare()
        system.start_all()
        system.create_customer("bench", "a-long-passphrase-1")
        session = system.login("bench", "a-long-passphrase-1")
        order_id = system.buy(session, "bunny")
        system.post_webhook(system.checkout_completed_event(order_id))
        wait_until(
            lambda: _management_url(system.order_page(session, order_id)),
            900,
            "a ready server",
            system=system,
        )
        for n in range(1, args.rounds + 1):
            start = time.monotonic()
            _console(system, session, order_id, "password")
            wait_until(
                lambda: 'id="new-password"' in system.order_page(session, order_id),
                300,
                "the rotation",
                interval=0.2,
                system=system,
            )
            rotations.append(time.monotonic() - start)
            system.reveal_credentials(session, order_id)  # the notice is over

            done_before = system.order_page(session, order_id).count("Your server was restarted.")
            start = time.monotonic()
            _console(system, session, order_id, "restart")
            wait_until(
                lambda before=done_before: (
                    system.order_page(session, order_id).count("Your server was restarted.")
                    > before
                ),
                900,
                "the restart",
                interval=0.2,
                system=system,
            )
            restarts.append(time.monotonic() - start)
            print(f"round {n}: rotation {rotations[-1]:.2f} s, restart {restarts[-1]:.2f} s")
    finally:
        system.stop_all()
        for pid in system.qemu_pids():
            system.kill_pid(pid)
        shutil.rmtree(workdir, ignore_errors=True)
        rabbitmqctl("delete_vhost", vhost)
    print(
        f"image={args.image} rounds={len(rotations)} "
        f"rotation_median_s={statistics.median(rotations):.2f} "
        f"restart_median_s={statistics.median(restarts):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
