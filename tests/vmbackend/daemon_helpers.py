"""Helpers for the daemon's integration tests: real daemon subprocesses, a loopback TCP proxy
in front of the real broker (to cut the daemon's connection without touching the shared
RabbitMQ), and broker clean-up between tests that share the session's vhost."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from tests.conftest import drop_vhost, make_vhost, vhost_url
from tests.qemu_procs import qemu_pids
from vmbackend.client import Client
from vmbackend.images import manifest
from vmbackend.protocol import topology

ROOT = Path(__file__).resolve().parents[2]


def clean_broker(amqp_url: str) -> None:
    """Empty the shared queues (never delete them: other tests' consumers may be attached), so
    one test's leftovers never reach another test's daemon or the shop's event tests."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        topology.declare_common(channel)
        topology.declare_events_store(channel)
        for queue in (topology.CREATE_QUEUE, topology.DEAD_QUEUE, topology.EVENTS_STORE_QUEUE):
            channel.queue_purge(queue)
    finally:
        conn.close()


def unique_host_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class DaemonProcess:
    """`python -m vmbackend daemon` as a real subprocess with env configuration."""

    def __init__(
        self,
        *,
        host_id: str,
        amqp_url: str,
        state_dir: Path,
        image_dir: Path,
        capacity: int = 2,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        netns: str | None = None,
        test_speed: bool = True,
    ):
        self.host_id = host_id
        self.state_dir = state_dir
        self.log_path = log_path
        env = dict(os.environ)
        env.update(
            {
                "WARREN_HOST_ID": host_id,
                "WARREN_AMQP_URL": amqp_url,
                "WARREN_STATE_DIR": str(state_dir),
                "WARREN_IMAGE_DIR": str(image_dir),
                "WARREN_CAPACITY": str(capacity),
                "WARREN_PORT_RANGE": "21000-28999",
                "WARREN_LOG_LEVEL": "INFO",
                # The shared development user (guest) sends the tests' commands: listed
                # explicitly, as a development host must (docs/security.md).
                "WARREN_COMMAND_SENDERS": "guest",
            }
        )
        if test_speed:  # tests want answers fast; a bench measures the product's defaults
            env.update(
                {
                    "WARREN_ACCEL": "tcg",
                    "WARREN_BOOT_DEADLINE": "300",
                    "WARREN_HEARTBEAT_INTERVAL": "1",
                    "WARREN_STOP_TIMEOUT": "10",
                }
            )
        env.update(extra_env or {})
        cmd = [sys.executable, "-m", "vmbackend", "daemon"]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit; used in fixture teardown."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@dataclass(frozen=True)
class BenchHost:
    url: str  # the private vhost's AMQP URL
    host_id: str
    work: Path  # the daemon's state folder is work/"state"
    daemon: DaemonProcess


@contextlib.contextmanager
def bench_host(*, prefix: str, env: dict[str, str], capacity: int = 1) -> Iterator[BenchHost]:
    """One daemon subprocess on a vhost of its own, for the bench scripts: the images of
    WARREN_IMAGE_DIR (or the default cache), the daemon's own defaults (KVM where it works)
    but for `env`. Afterwards the daemon is
    stopped, any QEMU left in its folder killed, and the vhost dropped."""
    vhost = make_vhost("warren-bench")
    work = Path(tempfile.mkdtemp(prefix=prefix))  # short: VM sockets live below
    host_id = unique_host_id("bench")
    image_dir = Path(os.environ.get("WARREN_IMAGE_DIR") or manifest.default_images_root())
    daemon = DaemonProcess(
        host_id=host_id,
        amqp_url=vhost_url(vhost),
        state_dir=work / "state",
        image_dir=image_dir,
        capacity=capacity,
        log_path=work / "daemon.log",
        extra_env=env,
        test_speed=False,
    )
    try:
        yield BenchHost(url=vhost_url(vhost), host_id=host_id, work=work, daemon=daemon)
    finally:
        daemon.stop()
        for pid in qemu_pids(work):  # a run that failed half-way leaves no VM behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
        drop_vhost(vhost)


def wait_host(client: Client, host_id: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Wait until `host_id` answers list-vms on its own key; returns its VMs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        replies = client.collect(
            "list-vms", routing_key=topology.host_key(host_id), wait=1.0, expect=1
        )
        if replies:
            return replies[0]["response"]
    raise AssertionError(f"host {host_id} never answered list-vms")


def vms_of(client: Client, host_id: str) -> dict[str, dict[str, Any]]:
    return {vm["vm-id"]: vm for vm in wait_host(client, host_id, timeout=30)}


def events_for(client: Client, vm_id: str, type_: str | None = None) -> list[dict[str, Any]]:
    """The VM's events in arrival order: its seq-ordered history, without the instance.metrics
    samples (no seq, every WARREN_METRICS_INTERVAL) unless `type_` asks for them."""
    return [
        e
        for e in client.events
        if e.get("instance_id") == vm_id
        and (e.get("type") == type_ if type_ else e.get("type") != "instance.metrics")
    ]


def with_port(amqp_url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(amqp_url)
    netloc = parts.netloc.rsplit("@", 1)
    creds = netloc[0] + "@" if len(netloc) == 2 else ""
    return urllib.parse.urlunsplit((parts.scheme, f"{creds}127.0.0.1:{port}", parts.path, "", ""))


def read_state(state_dir: Path, vm_id: str) -> dict[str, Any] | None:
    path = state_dir / "vms" / f"{vm_id}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


class Daemons:
    """Starts daemons for one test and cleans up after it: daemons stopped, leftover QEMUs killed."""

    def __init__(self, tmp_path: Path, amqp_url: str, image_dir: Path):
        self.tmp_path = tmp_path
        # State dirs hold the VMs' Unix sockets (108-byte path limit): keep them short.
        self.short = Path(tempfile.mkdtemp(prefix="wd-"))
        self.amqp_url = amqp_url
        self.image_dir = image_dir
        self.started: list[DaemonProcess] = []

    def start(
        self,
        host_id: str | None = None,
        *,
        capacity: int = 2,
        amqp_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        netns: str | None = None,
    ) -> DaemonProcess:
        host_id = host_id or unique_host_id()
        proc = DaemonProcess(
            host_id=host_id,
            amqp_url=amqp_url or self.amqp_url,
            state_dir=self.short / host_id,
            image_dir=self.image_dir,
            capacity=capacity,
            log_path=self.tmp_path / f"{host_id}.log",
            extra_env=extra_env,
            netns=netns,
        )
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            proc.stop()
        try:
            clean_broker(self.amqp_url)
        except pika.exceptions.AMQPError:
            pass  # the broker itself is never stopped by these tests; nothing to clean then
        for pid in qemu_pids(self.short):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.short, ignore_errors=True)


def basic_auth_status(url: str, user: str, password: str, timeout: float = 10) -> int:
    """HTTP status of GET {url}api/overview with basic auth (401 when refused)."""
    import base64
    import urllib.error
    import urllib.request

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    if not url.startswith("http://"):
        raise ValueError(f"not an http URL: {url}")
    request = urllib.request.Request(  # noqa: S310 - checked above
        url + "api/overview", headers={"Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
