"""Crash recovery: confirmed persistent messages, `kill -9` of the VM's QEMU, a cold start from the
VM's own disk, and a count of what came back. Prints "N of M recovered" per image.

One VM per image is booted through the real QemuMachine class and reused for every round (a round
that does not recover costs a fresh VM for the next one). Each round publishes --messages
persistent messages with publisher confirms to a durable classic queue, a quorum queue and a
stream (messages stay: the expected counts grow round by round, so a later crash must also keep
the earlier rounds' messages), then SIGKILLs QEMU and starts the VM again. With --burst a publisher
keeps publishing (confirms on) while QEMU is killed: every message confirmed before the kill must
be back; unconfirmed ones may or may not be. The round recovers when the management API answers
with the VM's own credentials within --deadline seconds and each queue holds at least what was
confirmed. Timings: kill -> management API answering again, and -> AMQP answering.

Before the first kill it also shows the durability facts on both sides: the guest's root mount
options and its disk's write cache mode, QEMU's cache mode for the disk (query-block), and whether
a just-confirmed message's bytes are already in the VM's disk file on the host.

    .venv/bin/python bench/crash.py [--images rabbitmq-4.0,rabbitmq-3.10] [--rounds 3]
                                    [--messages 500] [--burst] [--restore]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmbackend.images import manifest  # noqa: E402
from vmbackend.machine import qmp  # noqa: E402
from vmbackend.machine.base import MachineError  # noqa: E402
from vmbackend.machine.qemu import UserNet, VMSpec  # noqa: E402
from vmbackend.machine.qemu_machine import QemuMachine  # noqa: E402

QUEUES: dict[str, dict[str, str]] = {
    "crash-classic": {"x-queue-type": "classic"},
    "crash-quorum": {"x-queue-type": "quorum"},
    "crash-stream": {"x-queue-type": "stream"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_machine(image: str, images_root: Path, folder: Path) -> QemuMachine:
    vm_id = f"crash{uuid.uuid4().hex[:8]}"
    spec = VMSpec(
        vm_id=vm_id, image=image, memory_mb=512, vcpus=1, disk_gb=4, hostname=f"vm-{vm_id}",
        admin_user=f"warren-{uuid.uuid4().hex[:6]}", admin_password=uuid.uuid4().hex,
        network=UserNet("127.0.0.1", free_port(), free_port()),
    )  # fmt: skip
    return QemuMachine(spec, folder / vm_id, images_root)


def amqp(
    m: QemuMachine, user: str | None = None, password: str | None = None
) -> pika.BlockingConnection:
    net = m.spec.network
    assert isinstance(net, UserNet)
    creds = pika.PlainCredentials(user or m.spec.admin_user, password or m.spec.admin_password)
    params = pika.ConnectionParameters(
        host=net.bind_address, port=net.amqp_port, credentials=creds, socket_timeout=30,
        blocked_connection_timeout=60, connection_attempts=1, heartbeat=0,
    )  # fmt: skip
    return pika.BlockingConnection(params)


def declare(ch: pika.adapters.blocking_connection.BlockingChannel) -> None:
    for name, args in QUEUES.items():
        ch.queue_declare(name, durable=True, arguments=args)


def publish(m: QemuMachine, count: int, tag: str) -> int:
    """`count` confirmed persistent messages to every queue; returns how many each got."""
    conn = amqp(m)
    try:
        ch = conn.channel()
        declare(ch)
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2)
        for i in range(count):
            for name in QUEUES:
                ch.basic_publish("", name, f"{tag}-{i}".encode(), props, mandatory=True)
        return count
    finally:
        conn.close()


@dataclass
class Burst:
    """Publishes (confirms on) until QEMU dies; counts what each queue had confirmed."""

    m: QemuMachine
    confirmed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUES, 0))
    error: str = ""

    def __post_init__(self) -> None:
        self.started = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        props = pika.BasicProperties(delivery_mode=2)
        try:
            conn = amqp(self.m)
            ch = conn.channel()
            ch.confirm_delivery()
            i = 0
            while True:
                for name in QUEUES:
                    ch.basic_publish("", name, f"burst-{i}".encode(), props, mandatory=True)
                    self.confirmed[name] += 1  # basic_publish returned: the broker confirmed
                    if i == 20:
                        self.started.set()
                i += 1
        except Exception as exc:  # noqa: BLE001 - the kill ends it: any error is the end
            self.error = type(exc).__name__
            self.started.set()


def count_stream(ch: pika.adapters.blocking_connection.BlockingChannel, want: int) -> int:
    """Messages in the stream, read from its first offset (stops at `want` or when idle).

    Idle means 30 s without a delivery: right after a restart the stream's writer may still be
    starting under TCG, and a 5 s wait once read an intact stream as empty."""
    ch.basic_qos(prefetch_count=1000)
    seen = 0
    for method, _, _ in ch.consume(
        "crash-stream", arguments={"x-stream-offset": "first"}, inactivity_timeout=30
    ):
        if method is None:
            break
        seen += 1
        ch.basic_ack(method.delivery_tag, multiple=False)
        if seen >= want:
            break
    ch.cancel()
    return seen


def counts(m: QemuMachine, expected: dict[str, int]) -> dict[str, int]:
    conn = amqp(m)
    try:
        ch = conn.channel()
        found = {}
        for name, args in QUEUES.items():
            if args["x-queue-type"] != "stream":
                found[name] = ch.queue_declare(name, passive=True).method.message_count
        found["crash-stream"] = count_stream(ch, expected["crash-stream"])
        return found
    finally:
        conn.close()


def wait_amqp(m: QemuMachine, deadline: float) -> None:
    while True:
        try:
            amqp(m).close()
            return
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def guest(m: QemuMachine, script: str, timeout: float = 120) -> str:
    code, out = m.guest_exec("/bin/sh", ["-c", script], timeout=timeout)
    return out.decode(errors="replace").strip() + ("" if code == 0 else f" (exit {code})")


def durability_facts(m: QemuMachine) -> dict[str, object]:
    """Guest mount options and write cache, QEMU's cache mode, and whether a just-confirmed
    message is in the VM's disk file on the host (through the host's page cache)."""
    facts: dict[str, object] = {
        "guest_root_mount": guest(m, "findmnt -no FSTYPE,OPTIONS /"),
        "guest_vda_write_cache": guest(m, "cat /sys/block/vda/queue/write_cache"),
        "guest_ext4_journal": guest(
            m, "cat /proc/fs/ext4/vda/options | grep -E 'data=|barrier|commit' | tr '\\n' ' '"
        ),
    }
    blocks = qmp.command(m.paths.qmp, "query-block")
    for b in blocks if isinstance(blocks, list) else []:
        if b.get("device") == "disk0" or b.get("qdev", "").endswith("disk0"):
            facts["qemu_cache"] = b.get("inserted", {}).get("cache")
    marker = uuid.uuid4().hex
    conn = amqp(m)
    try:
        ch = conn.channel()
        declare(ch)
        ch.confirm_delivery()
        for name in QUEUES:
            ch.basic_publish(
                "",
                name,
                f"marker-{name}-{marker}".encode(),
                pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
    finally:
        conn.close()
    data = m.paths.disk.read_bytes()  # right after the confirms, no sleep
    facts["confirmed_bytes_in_host_disk_file"] = {
        name: f"marker-{name}-{marker}".encode() in data for name in QUEUES
    }
    return facts


def guest_rabbit_log(m: QemuMachine) -> str:
    try:
        # The vhost's .config: 3.10's classic queue index recovery needs it (docs/images.md).
        return guest(
            m,
            "systemctl is-active rabbitmq-server; journalctl -u rabbitmq-server -n 5 "
            "--no-pager; stat -c '%s bytes %n' /var/lib/rabbitmq/mnesia/*/msg_stores/"
            "vhosts/*/.config; grep -ohE 'badmatch[^]]{0,80}|scan_queue_segments' "
            "/var/log/rabbitmq/*.log | sort | uniq -c | head -n 5; "
            "tail -n 60 /var/log/rabbitmq/rabbit@localhost.log | cut -c1-220 | grep -iE "
            "'error|crash|reason|boot step|recover|rebuild' | tail -n 8",
            timeout=180,
        )
    except MachineError as exc:
        return f"(guest agent: {exc})"


@dataclass
class Round:
    recovered: bool
    kill_to_mgmt: float | None
    kill_to_amqp: float | None
    expected: dict[str, int]
    found: dict[str, int]
    note: str = ""


def run_image(image: str, args: argparse.Namespace, folder: Path) -> list[Round]:
    rounds: list[Round] = []
    m: QemuMachine | None = None
    expected = dict.fromkeys(QUEUES, 0)
    try:
        for r in range(args.rounds):
            if m is None:
                m = new_machine(image, args.images_root, folder)
                started = time.monotonic()
                how = m.launch(allow_restore=args.restore)
                deadline = time.monotonic() + args.deadline
                m.wait_guest_agent(deadline)
                m.wait_management(m.management_url(), deadline)
                m.personalize(deadline)
                print(
                    f"{image}: fresh VM {m.spec.vm_id} ({how}) ready in "
                    f"{time.monotonic() - started:.1f} s",
                    flush=True,
                )
                expected = dict.fromkeys(QUEUES, 0)
                if r == 0:
                    print(f"{image}: durability {json.dumps(durability_facts(m))}", flush=True)
                    expected = dict.fromkeys(QUEUES, 1)  # the markers
            tag = f"r{r}-{uuid.uuid4().hex[:6]}"
            t = time.monotonic()
            n = publish(m, args.messages, tag)
            for name in QUEUES:
                expected[name] += n
            print(
                f"{image}: round {r + 1}: {n} confirmed messages x {len(QUEUES)} queues in "
                f"{time.monotonic() - t:.1f} s",
                flush=True,
            )
            burst = None
            if args.burst:
                burst = Burst(m)
                burst.thread.start()
                burst.started.wait(120)
                time.sleep(args.burst_seconds)
            killed = time.monotonic()
            m.kill()
            if burst is not None:
                burst.thread.join(30)
                for name in QUEUES:
                    expected[name] += burst.confirmed[name]
                print(
                    f"{image}: round {r + 1}: burst confirmed {burst.confirmed} before the kill "
                    f"({burst.error})",
                    flush=True,
                )
            m.start()
            deadline = time.monotonic() + args.deadline
            try:
                m.wait_management(m.management_url(), deadline)
            except MachineError as exc:
                note = (
                    f"management API never answered: {str(exc)[:200]}; guest: {guest_rabbit_log(m)}"
                )
                rounds.append(Round(False, None, None, dict(expected), {}, note))
                print(f"{image}: round {r + 1}: NOT RECOVERED: {note}", flush=True)
                m.destroy()
                m = None
                continue
            to_mgmt = time.monotonic() - killed
            wait_amqp(m, deadline)
            to_amqp = time.monotonic() - killed
            found = counts(m, expected)
            ok = all(found[name] >= expected[name] for name in QUEUES)
            rounds.append(Round(ok, to_mgmt, to_amqp, dict(expected), found))
            print(
                f"{image}: round {r + 1}: {'recovered' if ok else 'LOST MESSAGES'}: "
                f"kill -> management {to_mgmt:.1f} s, AMQP {to_amqp:.1f} s; "
                f"expected {expected} found {found}",
                flush=True,
            )
            expected = {name: max(expected[name], found[name]) for name in QUEUES}
        return rounds
    finally:
        if m is not None and not args.keep:
            m.destroy()


def summary(image: str, rounds: list[Round]) -> str:
    ok = [r for r in rounds if r.recovered]
    times = [r.kill_to_mgmt for r in ok if r.kill_to_mgmt is not None]
    text = f"{image}: {len(ok)} of {len(rounds)} recovered"
    if times:
        text += (
            f"; kill -> management API median {statistics.median(times):.1f} s "
            f"({min(times):.1f}-{max(times):.1f})"
        )
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="rabbitmq-4.0")
    parser.add_argument("--images-root", type=Path, default=manifest.default_images_root())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--burst", action="store_true", help="keep publishing while QEMU is killed")
    parser.add_argument("--burst-seconds", type=float, default=3.0)
    parser.add_argument("--restore", action="store_true", help="first boot from the saved state")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for a boot")
    parser.add_argument("--keep", action="store_true", help="keep the last VM's folder")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="wcrash-"))
    results = []
    try:
        for image in filter(None, args.images.split(",")):
            results.append(summary(image, run_image(image, args, folder)))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
