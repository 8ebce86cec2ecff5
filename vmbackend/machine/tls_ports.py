"""A VM's public TLS ports, opened at run time (user-mode networking, images with baked TLS).

A restored VM's RabbitMQ already listens on amqps (5671) and https (15671), first with the image's
throw-away certificate. QEMU starts without forwards to those ports; once the host has written
the VM's own file, `open_tls_ports` sees, through a loopback forward of its own that lives for one
handshake, that each guest port serves the VM's certificate, and only then forwards the VM's
public ports to them. So the throw-away never answers a customer (docs/tls.md). The forwards are
HMP `hostfwd_add`/`hostfwd_remove` through QMP, a few tens of milliseconds each.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from pathlib import Path

from vmbackend.machine import qmp
from vmbackend.machine.base import MachineError
from vmbackend.machine.qemu import TLS_AMQP_PORT, TLS_MANAGEMENT_PORT, UserNet

log = logging.getLogger(__name__)

NETDEV = "net0"
# The first handshake of a node: 0.2-2.6 s after a restore (the snapshot warmed it up), 5-20 s
# after a cold boot under TCG (19.7 s for both ports at load 17).
HANDSHAKE_SECONDS = 90.0
GUEST_PORTS = (TLS_AMQP_PORT, TLS_MANAGEMENT_PORT)
# `info usernet`: "  TCP[HOST_FORWARD]  13   127.0.0.1 40001   10.0.2.15  5671  0  0"
_FORWARD_RE = re.compile(r"^\s*TCP\[HOST_FORWARD\]\s+\S+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)\b")


def add_command(bind: str, host_port: int, guest_port: int) -> str:
    return f"hostfwd_add {NETDEV} tcp:{bind}:{host_port}-:{guest_port}"


def remove_command(bind: str, host_port: int) -> str:
    return f"hostfwd_remove {NETDEV} tcp:{bind}:{host_port}"


def hmp_failed(command: str, answer: str) -> bool:
    """HMP answers "" when a forward is added and a sentence when not (the port is taken, a bad
    rule); a removal answers "host forwarding rule for ... removed" or "... not found"."""
    text = answer.strip()
    if command.startswith("hostfwd_remove"):
        return not text.endswith("removed")
    return bool(text)


def forwarded(usernet: str) -> dict[int, int]:
    """Host port -> guest port of every TCP forward in `info usernet`'s answer."""
    found = {}
    for line in usernet.splitlines():
        if m := _FORWARD_RE.match(line):
            found[int(m.group(2))] = int(m.group(3))
    return found


def is_own(served_der: bytes, cert_der: bytes) -> bool:
    """Whether a listener answered with the VM's certificate. The handshake proved the guest holds
    that certificate's private key, which the host made for this VM only."""
    return bool(served_der) and served_der == cert_der


def _hmp(qmp_path: Path, line: str) -> str:
    try:
        out = qmp.command(qmp_path, "human-monitor-command", timeout=5, **{"command-line": line})
    except qmp.QMPFailure as exc:
        raise MachineError(f"{line}: {exc}") from exc
    return str(out)


def forward(qmp_path: Path, bind: str, host_port: int, guest_port: int) -> None:
    """Forward host `bind:host_port` to the guest's `guest_port` from now on."""
    line = add_command(bind, host_port, guest_port)
    if hmp_failed(line, answer := _hmp(qmp_path, line)):
        raise MachineError(f"{line}: {answer.strip()}")


def unforward(qmp_path: Path, bind: str, host_port: int) -> None:
    line = remove_command(bind, host_port)
    if hmp_failed(line, answer := _hmp(qmp_path, line)):
        raise MachineError(f"{line}: {answer.strip()}")


def served_certificate(qmp_path: Path, guest_port: int) -> bytes:
    """The DER certificate the guest's `guest_port` presents, through a forward on the host's
    loopback that only the daemon knows and that lives for this one handshake. Not verified:
    this is the check itself (the caller compares it with the issued certificate)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    forward(qmp_path, "127.0.0.1", port, guest_port)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_SECONDS) as raw:
            with context.wrap_socket(raw) as conn:
                return conn.getpeercert(binary_form=True) or b""
    except OSError as exc:  # ssl.SSLError included: the guest has no usable file
        raise MachineError(f"TLS check of guest port {guest_port}: {exc}") from exc
    finally:
        unforward(qmp_path, "127.0.0.1", port)


def open_tls_ports(qmp_path: Path, net: UserNet, cert_der: bytes) -> None:
    """Check that amqps and https serve `cert_der` (the VM's own), then forward the VM's public
    TLS ports to them; MachineError, and no public port, when either serves anything else.
    Idempotent: a VM adopted after a daemon restart may already have its forwards (`hostfwd_add`
    on a forwarded port fails), so those that exist are kept. Forwards live in the running QEMU:
    every new QEMU of the VM (start, heal, resize) needs this again."""
    wanted = [
        (host_port, guest_port)
        for host_port, guest_port in (
            (net.amqps_port, TLS_AMQP_PORT),
            (net.https_port, TLS_MANAGEMENT_PORT),
        )
        if host_port is not None
    ]
    for _, guest_port in wanted:
        if not is_own(served_certificate(qmp_path, guest_port), cert_der):
            raise MachineError(f"guest port {guest_port} does not serve the VM's certificate")
    existing = forwarded(_hmp(qmp_path, "info usernet"))
    for host_port, guest_port in wanted:
        if existing.get(host_port) == guest_port:
            continue
        if host_port in existing:
            raise MachineError(f"host port {host_port} is forwarded to {existing[host_port]}")
        forward(qmp_path, net.bind_address, host_port, guest_port)
    log.info("tls ports open ports=%s", ",".join(str(h) for h, _ in wanted))
