"""What TLS costs on the restore path (issue 15): the real rabbitmq-4.0 image, one VM at a time,
alternating runs without and with TLS.

Per run, seconds from QEMU start to the management API answering with the VM's own credentials
(what `instance.ready` waits for), with TLS after the certificate was issued (fresh key) and
installed before the cookie rotation, as Boot does; and, with TLS, the seconds of the install
alone and the first verified amqps handshake. Prints each run and the medians.

    .venv/bin/python bench/tls_restore.py [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.net import free_port  # noqa: E402
from vmbackend.images import manifest  # noqa: E402
from vmbackend.machine.qemu import UserNet, VMSpec  # noqa: E402
from vmbackend.machine.qemu_machine import QemuMachine  # noqa: E402
from vmbackend.tls import authority, guest_install  # noqa: E402

IMAGE = "rabbitmq-4.0"
DEADLINE = 900.0


def one_run(
    root: Path, work: Path, issuer: authority.Issuer | None, ca_file: Path
) -> dict[str, float]:
    vm_id = f"bench{uuid.uuid4().hex[:8]}"
    net = UserNet(
        "127.0.0.1", free_port(), free_port(), amqps_port=free_port(), https_port=free_port()
    )
    spec = VMSpec(
        vm_id=vm_id, image=IMAGE, memory_mb=512, vcpus=1, disk_gb=3, hostname=f"vm-{vm_id}",
        admin_user=f"warren-{uuid.uuid4().hex[:6]}", admin_password=uuid.uuid4().hex, network=net,
    )  # fmt: skip
    machine = QemuMachine(spec, work / vm_id, root)
    result: dict[str, float] = {}
    try:
        started = time.monotonic()
        if machine.launch() != "restore":
            raise SystemExit("the image's saved state does not match: build and snapshot it first")
        deadline = started + DEADLINE
        machine.wait_guest_agent(deadline)

        def install() -> None:
            assert issuer is not None
            t0 = time.monotonic()
            guest_install.install(machine, authority.issue(issuer, ["127.0.0.1"]), plain_ports=True)
            result["install"] = time.monotonic() - t0

        machine.personalize(deadline, before_cookie=install if issuer else None)
        machine.wait_management(machine.management_url(), deadline)
        result["ready"] = time.monotonic() - started
        if issuer is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
            t0 = time.monotonic()
            assert net.amqps_port is not None
            with socket.create_connection(("127.0.0.1", net.amqps_port), timeout=30) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                    pass
            result["handshake"] = time.monotonic() - t0
    finally:
        machine.destroy()
    return result


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
            r = one_run(root, work, None, ca_file)
            plain.append(r["ready"])
            print(f"run {i + 1} plain: ready {r['ready']:.1f} s", flush=True)
            r = one_run(root, work, issuer, ca_file)
            secure.append(r)
            print(
                f"run {i + 1} tls:   ready {r['ready']:.1f} s (install {r['install']:.1f} s, "
                f"first amqps handshake {r['handshake'] * 1000:.0f} ms)",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med_plain = statistics.median(plain)
    med_tls = statistics.median(r["ready"] for r in secure)
    print(f"median restore to ready, plain: {med_plain:.1f} s")
    print(f"median restore to ready, tls:   {med_tls:.1f} s (+{med_tls - med_plain:.1f} s)")
    print(f"median install: {statistics.median(r['install'] for r in secure):.1f} s")
    print(
        f"median first handshake: {statistics.median(r['handshake'] for r in secure) * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
