"""One real RabbitMQ VM through the host daemon, for what a customer's server lives through (slow
tier): create-vm → ready → confirmed messages → `kill -9` of its QEMU → the host's own restart
from the VM's disk (self-healing) → every message back → delete-vm.

A real-image boot costs minutes under TCG on a loaded CI host, so one VM serves every check, in
the order of the tests below (each test continues from the previous one's VM, as in
test_debian_image.py). It is the customer's path: the image new orders get, 512 MiB, so
create-vm restores it from the image's saved state, and the heal is a cold boot of that VM's own
disk (the overlay on the saved disk). The first-boot (cold, fw_cfg) checks are
test_debian_image.py's; the restore through Machine is test_snapshot.py's.

The seconds from the kill to a working management URL are printed (`-s` shows them); speed is
not asserted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import pytest

from tests.vmbackend.daemon_helpers import (
    DaemonProcess,
    Daemons,
    basic_auth_status,
    clean_broker,
    events_for,
    qemu_pids,
    wait_host,
)
from vmbackend.client import Client
from vmbackend.images import manifest, versions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

IMAGE = os.environ.get("WARREN_HEAL_TEST_IMAGE", versions.image_for(versions.DEFAULT_VERSION))
VM_ID = "vm-heal-real"
BOOT_SECONDS = 1500  # a cold boot of the real image under TCG on a loaded host (656 s seen)
QUEUES = {"heal-classic": "classic", "heal-quorum": "quorum", "heal-stream": "stream"}
MESSAGES = 300  # per queue, each confirmed by the broker before the kill


@dataclass
class RealVM:
    """The daemon, the client watching its events, and what the requester of the VM knows."""

    daemon: DaemonProcess
    client: Client
    password: str
    ready: dict[str, Any] = field(default_factory=dict)
    sent: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return str(self.ready["admin_username"])

    def status(self, user: str | None = None, password: str | None = None) -> int:
        return basic_auth_status(
            self.ready["management_url"], user or self.user, password or self.password
        )

    def amqp(self, password: str | None = None, attempts: int = 3) -> pika.BlockingConnection:
        url = self.ready["amqp_url"]
        host_port = url.split("@", 1)[1].strip("/")
        host, port = host_port.rsplit(":", 1)
        params = pika.ConnectionParameters(
            host=host, port=int(port),
            credentials=pika.PlainCredentials(self.user, password or self.password),
            socket_timeout=10, blocked_connection_timeout=30, connection_attempts=attempts,
            retry_delay=2,
        )  # fmt: skip
        return pika.BlockingConnection(params)

    def wait(self, types: tuple[str, ...], after: int, seconds: float) -> dict[str, Any]:
        """The first event of `types` for the VM with a seq above `after` (pumping the client)."""
        end = time.monotonic() + seconds
        while True:
            for event in events_for(self.client, VM_ID):
                if event["type"] in types and event["seq"] > after:
                    return event
            assert time.monotonic() < end, f"no {types} after seq {after} within {seconds} s"
            self.client.pump(0.5)

    def last_seq(self) -> int:
        return max((e.get("seq", 0) for e in events_for(self.client, VM_ID)), default=0)


def _ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["execution-info"]["status"] == "success", reply
    response: dict[str, Any] = reply["response"]
    return response


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[RealVM]:
    root = manifest.default_images_root()
    try:
        manifest.load(root, IMAGE)
    except manifest.ImageError as exc:
        pytest.fail(f"the real image {IMAGE!r} is not built here ({exc}); `make images` builds it")
    clean_broker(amqp_url)
    pool = Daemons(tmp_path_factory.mktemp("heal"), amqp_url, root)
    try:
        daemon = pool.start(extra_env={"WARREN_BOOT_DEADLINE": str(BOOT_SECONDS)})
        with Client(amqp_url) as client:
            client.watch_events("#")
            wait_host(client, daemon.host_id)
            created = _ok(
                client.call("create-vm", {"image": IMAGE, "vm-id": VM_ID, "memory-mb": 512})
            )
            yield RealVM(daemon, client, created["admin-password"])
    finally:
        pool.cleanup()


def test_create_vm_ends_ready_with_working_urls_and_only_the_own_credentials(vm: RealVM):
    vm.ready = vm.wait(("instance.ready", "instance.failed"), 0, BOOT_SECONDS)
    assert vm.ready["type"] == "instance.ready", vm.ready
    assert vm.ready["boot"] in ("cold", "restore")
    assert vm.password not in str(vm.ready)
    assert vm.status() == 200
    assert vm.status("guest", "guest") == 401
    assert vm.status(vm.user, "wrong-" + vm.password) == 401
    conn = vm.amqp()
    try:
        conn.channel().queue_declare("", exclusive=True)
    finally:
        conn.close()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        vm.amqp("guest", attempts=1)


def _publish_confirmed(vm: RealVM) -> None:
    conn = vm.amqp()
    try:
        ch = conn.channel()
        for name, kind in QUEUES.items():
            ch.queue_declare(name, durable=True, arguments={"x-queue-type": kind})
        ch.confirm_delivery()  # each basic_publish returns once the broker confirmed it
        for i in range(MESSAGES):
            for name in QUEUES:
                body = f"{name}-{i}".encode()
                ch.basic_publish(
                    "", name, body, pika.BasicProperties(delivery_mode=2), mandatory=True
                )
                vm.sent.setdefault(name, []).append(body)
            if i % 50 == 0:
                vm.client.pump(0)  # keep the event watcher's connection alive
    finally:
        conn.close()


def _read_back(vm: RealVM) -> None:
    conn = vm.amqp(attempts=10)
    try:
        ch = conn.channel()
        for name in ("heal-classic", "heal-quorum"):
            assert ch.queue_declare(name, passive=True).method.message_count == MESSAGES, name
        ch.basic_qos(prefetch_count=500)
        bodies = []
        # A stream's reader starts once the stream coordinator (a Raft machine recovering its
        # own log first) serves it: wait up to 30 s for the first delivery.
        for method, _, body in ch.consume(
            "heal-stream", arguments={"x-stream-offset": "first"}, inactivity_timeout=30
        ):
            if method is None:
                break
            bodies.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(bodies) == MESSAGES:
                break
        ch.cancel()
        assert bodies == vm.sent["heal-stream"]
        for name in ("heal-classic", "heal-quorum"):  # in order and readable, not just counted
            got = [ch.basic_get(name, auto_ack=False)[2] for _ in range(MESSAGES)]
            assert got == vm.sent[name], name
        ch.close()  # unacked: back in the queues for the checks after this one
    finally:
        conn.close()


def test_a_killed_vm_is_restarted_by_the_host_with_every_confirmed_message(vm: RealVM):
    """Issue 11: a `kill -9` of QEMU (what an OOM kill or a crash does); the host notices and
    starts the VM again from its own disk: instance.restarting, then instance.ready with the
    same URLs and credentials, and every confirmed persistent message in the durable classic
    queue, the quorum queue and the stream."""
    assert vm.ready, "needs the ready VM of the test before"
    _publish_confirmed(vm)
    before = vm.last_seq()
    [pid] = qemu_pids(vm.daemon.state_dir)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    restarting = vm.wait(("instance.restarting", "instance.lost"), before, 30)
    noticed = time.monotonic() - killed
    assert restarting["type"] == "instance.restarting", restarting
    assert restarting["attempt"] == 1
    again = vm.wait(("instance.ready", "instance.lost", "instance.restarting"), restarting["seq"],
                    BOOT_SECONDS)  # fmt: skip
    assert again["type"] == "instance.ready", again
    for key in ("management_url", "amqp_url", "admin_username"):
        assert again[key] == vm.ready[key]
    assert again["boot"] == "cold"  # from its own disk, never the image's saved state
    while vm.status() != 200:
        assert time.monotonic() < killed + BOOT_SECONDS
        vm.client.pump(0.5)
    seconds = time.monotonic() - killed
    [new_pid] = qemu_pids(vm.daemon.state_dir)
    assert new_pid != pid
    _read_back(vm)
    assert vm.status("guest", "guest") == 401
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        vm.amqp("guest", attempts=1)
    load = os.getloadavg()
    print(
        f"\n{IMAGE}: kill -9 -> instance.restarting {noticed:.1f} s, -> management URL "
        f"answering again {seconds:.1f} s (cold boot from the VM's disk; load {load[0]:.1f})"
    )


def test_delete_vm_removes_the_vm_and_its_qemu(vm: RealVM):
    deleted = _ok(vm.client.call("delete-vm", {"vm-id": VM_ID}, timeout=120))
    assert deleted["status"] == "deleted"
    assert qemu_pids(vm.daemon.state_dir) == []
    assert not list(vm.daemon.state_dir.glob(f"**/{VM_ID}/disk.qcow2"))
