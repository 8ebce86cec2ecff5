"""The whole system as real processes, for end-to-end tests and benchmarks.

Each service runs exactly as `python -m warren run` starts it (the same argument lists), against a
SQLite file database in a temporary folder, the test session's private RabbitMQ vhost, and a host
daemon with its own state folder. Tests drive it over HTTP like a customer (and like Stripe).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.net import free_port
from tests.qemu_procs import qemu_pids
from tests.stripe_signing import stripe_signature
from vmbackend.protocol import broker_users
from warren import broker_setup
from warren.run import ROOT, Options, service_commands

WEBHOOK_SECRET = "whsec_e2e_" + uuid.uuid4().hex


def wait_until(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.5,
    system: System | None = None,
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` (and the system's logs,
    read at that moment) after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error on timeout
            last_error = exc
        time.sleep(interval)
    logs = system.logs() if system else ""
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}; last error: {last_error!r}\n{logs}"
    )


class System:
    def __init__(
        self,
        workdir: Path,
        amqp_url: str,
        images_root: Path,
        image: str = "tiny",
        host_id: str | None = None,
        extra_env: dict[str, str] | None = None,
    ):
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.host_id = host_id or f"e2e-{uuid.uuid4().hex[:8]}"
        self.options = Options(port=self.port, image=image, web_workers=1)
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "DJANGO_DEBUG": "0",
            "STRIPE_SECRET_KEY": "",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WARREN_SITE_URL": self.base_url,
            "WARREN_AMQP_URL": amqp_url,
            "WARREN_INSTANCE_IMAGE": image,
            "WARREN_IMAGE_DIR": str(images_root),
            "WARREN_STATE_DIR": str(workdir / "vmbackend"),
            "WARREN_HOST_ID": self.host_id,
            "WARREN_CAPACITY": "2",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.commands = service_commands(self.options)
        # As `warren run`: the shop and the host each with a broker user of their own (a shop
        # name of its own too: other tests' shops run on the same broker at the same time).
        self.shop_user = f"warren-shop-{self.host_id}"
        self.broker_users = [self.shop_user]
        self.service_env = broker_setup.service_environments(
            self.env, self.host_id, shop_user=self.shop_user
        )
        self.broker_users.append(broker_users.host_user(self.host_id))

    def host_env(self, host_id: str) -> dict[str, str]:
        """The broker user of another host daemon started by a test (deleted at stop_all)."""
        self.broker_users.append(broker_users.host_user(host_id))
        return broker_setup.host_environment(
            self.env["WARREN_AMQP_URL"], host_id, shop_user=self.shop_user
        )

    # --- processes -------------------------------------------------------------------------

    def manage(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done.stdout

    def prepare(self) -> None:
        self.manage("migrate", "--noinput")
        self.manage("seed_plans")
        self.manage("collectstatic", "--noinput", "--verbosity", "0")

    def start(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            self.commands[name],
            cwd=ROOT,
            env={**self.env, **self.service_env.get(name, {}), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        if name == "web":
            wait_until(
                lambda: requests.get(self.base_url + "/", timeout=2).ok, 60, "the web server"
            )
        return proc

    def start_all(self) -> None:
        for name in self.commands:
            self.start(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def drop_broker_users(self) -> None:
        """Delete the broker users this system made (users are not per vhost: they outlive it)."""
        for user in self.broker_users:
            try:
                broker_users.delete_user(user)
            except broker_users.BrokerAdminError:
                pass  # the broker may be down after a drill; a leftover user is harmless

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"----- {n} -----\n{self.log(n)[-4000:]}" for n in self.commands)

    @staticmethod
    def kill_pid(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def qemu_pids(self) -> list[int]:
        """QEMU processes of this system's daemon (they run in VM folders under its state dir)."""
        return qemu_pids(self.workdir / "vmbackend")

    # --- a customer, over HTTP --------------------------------------------------------------

    def create_customer(self, username: str, password: str) -> None:
        self.manage(
            "shell",
            "-c",
            "from django.contrib.auth.models import User; "
            f"User.objects.create_user({username!r}, {username + '@example.com'!r}, {password!r})",
        )

    def login(self, username: str, password: str) -> requests.Session:
        session = requests.Session()
        page = session.get(f"{self.base_url}/accounts/login/", timeout=10)
        page.raise_for_status()
        resp = session.post(
            f"{self.base_url}/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": csrf(page.text),
            },
            headers={"Referer": f"{self.base_url}/accounts/login/"},
            timeout=10,
        )
        resp.raise_for_status()
        return session

    def buy(self, session: requests.Session, plan_slug: str) -> str:
        """Checks out a plan; returns the order's public id (from the redirect to payment)."""
        pricing = session.get(f"{self.base_url}/", timeout=10)
        resp = session.post(
            f"{self.base_url}/orders/checkout/{plan_slug}/",
            data={"csrfmiddlewaretoken": csrf(pricing.text)},
            headers={"Referer": f"{self.base_url}/"},
            timeout=10,
        )
        resp.raise_for_status()
        match = re.search(r"/orders/([0-9a-f-]{36})/", resp.url)
        if not match:
            raise AssertionError(f"checkout did not lead to an order page: {resp.url}")
        return match.group(1)

    def stripe_event(self, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": event_type,
            "data": {"object": data},
        }

    def checkout_completed_event(self, order_id: str) -> dict[str, Any]:
        return self.stripe_event(
            "checkout.session.completed",
            {
                "id": f"cs_test_{uuid.uuid4().hex}",
                "object": "checkout.session",
                "mode": "subscription",
                "status": "complete",
                "payment_status": "paid",
                "client_reference_id": order_id,
                "metadata": {"order_id": order_id},
                "customer": f"cus_{uuid.uuid4().hex[:14]}",
                "subscription": f"sub_{uuid.uuid4().hex[:14]}",
                "amount_total": 1500,
                "currency": "usd",
            },
        )

    def post_webhook(self, event: dict[str, Any]) -> requests.Response:
        payload = json.dumps(event).encode()
        return requests.post(
            f"{self.base_url}/orders/webhooks/stripe/",
            data=payload,
            headers={
                "Content-Type": "application/json",
                "Stripe-Signature": stripe_signature(payload, WEBHOOK_SECRET),
            },
            timeout=10,
        )

    def order_page(self, session: requests.Session, order_id: str) -> str:
        resp = session.get(f"{self.base_url}/orders/{order_id}/", timeout=10)
        resp.raise_for_status()
        return resp.text

    def reveal_credentials(self, session: requests.Session, order_id: str) -> dict[str, str]:
        page = self.order_page(session, order_id)
        resp = session.post(
            f"{self.base_url}/orders/{order_id}/credentials/",
            data={"csrfmiddlewaretoken": csrf(page)},
            headers={
                "Accept": "application/json",
                "Referer": f"{self.base_url}/orders/{order_id}/",
            },
            timeout=10,
        )
        resp.raise_for_status()
        return resp.json()

    def cancel(self, session: requests.Session, order_id: str) -> None:
        page = self.order_page(session, order_id)
        resp = session.post(
            f"{self.base_url}/orders/{order_id}/cancel/",
            data={"csrfmiddlewaretoken": csrf(page)},
            headers={"Referer": f"{self.base_url}/orders/{order_id}/"},
            timeout=10,
        )
        resp.raise_for_status()

    def order_status(self, session: requests.Session, order_id: str) -> dict[str, Any]:
        resp = session.get(f"{self.base_url}/orders/{order_id}/status/", timeout=10)
        resp.raise_for_status()
        return resp.json()


def csrf(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    if not match:
        raise AssertionError("no CSRF token in the page")
    return match.group(1)


def admin_session(
    system: System, username: str = "staff", password: str = "staff-pass-1234"
) -> requests.Session:
    """A logged-in staff member of the Django admin."""
    system.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        f"User.objects.create_superuser({username!r}, 'staff@example.com', {password!r})",
    )
    session = requests.Session()
    url = f"{system.base_url}/admin/login/"
    page = session.get(url, timeout=10)
    resp = session.post(
        url,
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": csrf(page.text),
            "next": "/admin/",
        },
        headers={"Referer": url},
        timeout=10,
    )
    resp.raise_for_status()
    if "/admin/login/" in resp.url:
        raise AssertionError("staff login failed")
    return session


def admin_action(
    session: requests.Session, system: System, model: str, query: str, action: str
) -> None:
    """Runs an admin changelist action on the rows that the search `query` finds."""
    url = f"{system.base_url}/admin/orders/{model}/"
    page = session.get(url, params={"q": query}, timeout=10)
    page.raise_for_status()
    selected = re.findall(r'name="_selected_action" value="([^"]+)"', page.text)
    if not selected:
        raise AssertionError(f"no {model} found for {query!r}")
    resp = session.post(
        url + f"?q={query}",
        data={
            "action": action,
            "_selected_action": selected,
            "index": "0",
            "csrfmiddlewaretoken": csrf(page.text),
        },
        headers={"Referer": url},
        timeout=10,
    )
    resp.raise_for_status()
