"""What TLS costs on the restore path (issues 15, 23): the real rabbitmq-4.0 image (TLS listeners
baked in), one VM at a time, alternating runs without and with TLS.

Per run, seconds from QEMU start to the management API answering with the VM's own credentials
and, with TLS, the public TLS ports open (what `instance.ready` waits for). With TLS, as Boot
does (host/baked_tls.py): a certificate with a fresh key written over the image's throw-away in
place (`put`), then the check that opens the ports in a thread beside personalization. Also the
seconds of `put` and of the check, how long ready waited for the check, and the first verified
amqps and https handshakes after ready. Prints each run and the medians.

    .venv/bin/python bench/tls_restore.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.net import free_port  # noqa: E402
from vmbackend.images import manifest  # noqa: E402
from vmbackend.machine.base import MachineError  # noqa: E402
from vmbackend.machine.qemu import UserNet, VMSpec  # noqa: E402
from vmbackend.machine.qemu_machine import QemuMachine  # noqa: E402
from vmbackend.tls import authority, guest_install  # noqa: E402

IMAGE = "rabbitmq-4.0"
DEADLINE = 900.0


def _handshake(port: int | None, ca_file: Path) -> float:
    assert port is not None
    context = ssl.create_default_context(cafile=str(ca_file))
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1"):
            pass
    return time.monotonic() - t0


def one_run(
    root: Path, work: Path, issuer: authority.Issuer | None, ca_file: Path
) -> dict[str, float]:
    vm_id = f"bench{uuid.uuid4().hex[:8]}"
    net = UserNet(
        "127.0.0.1", free_port(), free_port(), amqps_port=free_port(), https_port=free_port(),
        tls_gated=True,
    )  # fmt: skip
    spec = VMSpec(
        vm_id=vm_id, image=IMAGE, memory_mb=512, vcpus=1, disk_gb=3, hostname=f"vm-{vm_id}",
        admin_user=f"warren-{uuid.uuid4().hex[:6]}", admin_password=uuid.uuid4().hex, network=net,
    )  # fmt: skip
    machine = QemuMachine(spec, work / vm_id, root)
    result: dict[str, float] = {}
    errors: list[BaseException] = []
    try:
        started = time.monotonic()
        if machine.launch() != "restore":
            raise SystemExit("the image's saved state does not match: build and snapshot it first")
        deadline = started + DEADLINE
        machine.wait_guest_agent(deadline)
        thread = None
        if issuer is not None:
            t0 = time.monotonic()
            leaf = authority.issue(issuer, ["127.0.0.1"])
            guest_install.put(machine, leaf)
            result["put"] = time.monotonic() - t0
            own = ssl.PEM_cert_to_DER_cert(leaf.cert_pem.decode())

            def check() -> None:
                t1 = time.monotonic()
                try:
                    machine.open_tls_ports(own)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                result["check"] = time.monotonic() - t1

            thread = threading.Thread(target=check)
            thread.start()
        machine.personalize(deadline)
        machine.wait_management(machine.management_url(), deadline)
        if thread is not None:
            t0 = time.monotonic()
            thread.join()
            result["waited"] = time.monotonic() - t0
            if errors:
                raise errors[0]
        result["ready"] = time.monotonic() - started
        if issuer is not None:
            result["amqps"] = _handshake(net.amqps_port, ca_file)
            result["https"] = _handshake(net.https_port, ca_file)
    finally:
        machine.destroy()
    return result


def _attempts(
    root: Path, work: Path, issuer: authority.Issuer | None, ca_file: Path
) -> dict[str, float]:
    """One run, tried again (at most twice) when the loaded host makes a step time out: the
    failure is printed, so a reader sees how often that happened."""
    for attempt in range(3):
        try:
            return one_run(root, work, issuer, ca_file)
        except MachineError as exc:
            print(f"  attempt {attempt + 1} failed: {str(exc)[:160]}", flush=True)
    raise SystemExit("three attempts failed")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = manifest.default_images_root()
    work = Path(tempfile.mkdtemp(prefix="wbtls-"))
    root_key, root_cert = authority.create_root()
    key, cert = authority.create_intermediate(root_key, root_cert, "bench")
    issuer = authority.Issuer(key=key, cert=cert, root=root_cert)
    ca_file = work / "ca.pem"
    ca_file.write_bytes(authority.cert_pem(root_cert))
    plain: list[float] = []
    secure: list[dict[str, float]] = []
    try:
        for i in range(args.runs):
            r = _attempts(root, work, None, ca_file)
            plain.append(r["ready"])
            print(f"run {i + 1} plain: ready {r['ready']:.1f} s", flush=True)
            r = _attempts(root, work, issuer, ca_file)
            secure.append(r)
            print(
                f"run {i + 1} tls:   ready {r['ready']:.1f} s (put {r['put']:.2f} s, check "
                f"{r['check']:.2f} s beside personalization, ready waited {r['waited']:.2f} s "
                f"for it; first verified amqps {r['amqps'] * 1000:.0f} ms, https "
                f"{r['https'] * 1000:.0f} ms)",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med_plain = statistics.median(plain)
    med_tls = statistics.median(r["ready"] for r in secure)
    print(f"median restore to ready, plain: {med_plain:.1f} s")
    print(f"median restore to ready, tls:   {med_tls:.1f} s (+{med_tls - med_plain:.1f} s)")
    for name in ("put", "check", "waited"):
        print(f"median {name}: {statistics.median(r[name] for r in secure):.2f} s")
    for name in ("amqps", "https"):
        value = statistics.median(r[name] for r in secure) * 1000
        print(f"median first verified {name} handshake: {value:.0f} ms")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
