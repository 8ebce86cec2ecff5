"""TLS on the real RabbitMQ image (rabbitmq-4.0), on the restore path new orders take.

Slow tier: one VM restored from the image's saved state, whose RabbitMQ listens on amqps and https
from the image on, with a throw-away certificate (docs/tls.md). As Boot does: the VM's own file is
written in place once the guest agent answers, and the check that opens its public TLS ports runs
beside personalization. Shown here: before that the public ports refuse, and opening them fails
while the throw-away answers; after it, the key that answers on both ports is the one the host
made for this VM (verified against Warren's root and the VM's name); pika over amqps and
`requests` over https work, another CA and another name are refused; a renewed certificate is
served to new connections with no restart and no call into the node; a restarted node serves it
from its disk.
"""

from __future__ import annotations

import datetime
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.net import free_port
from tests.tls_clients import named_session
from vmbackend.host import certificates, config
from vmbackend.host.boot import rabbitmq_log_tail
from vmbackend.host.registry import Registry
from vmbackend.host.state import READY, StateStore, VMRecord
from vmbackend.images import manifest
from vmbackend.machine import tls_ports
from vmbackend.machine.base import MachineError
from vmbackend.machine.qemu import TLS_AMQP_PORT, TLS_MANAGEMENT_PORT, UserNet, VMSpec
from vmbackend.machine.qemu_machine import QemuMachine
from vmbackend.protocol.server_names import server_name
from vmbackend.tls import authority, guest_install

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

IMAGE = "rabbitmq-4.0"
READY_SECONDS = 1500.0


@dataclass
class TLSVM:
    machine: QemuMachine
    issuer: authority.Issuer
    leaf: authority.Leaf
    ca_file: Path
    other_ca_file: Path
    folder: Path
    throwaway: dict[int, bytes]  # guest port -> the image's certificate (DER) before put
    refused_before: dict[int, bool]  # public port -> refused before the VM's own file was in
    gate_error: str  # what opening the ports said while the throw-away answered
    timings: dict[str, float] = field(default_factory=dict)


def _refused(port: int) -> bool:
    """Whether nothing on the host's port completes a TLS handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw):
                return False
    except OSError:
        return True


@pytest.fixture(scope="module")
def vm() -> Iterator[TLSVM]:
    root = manifest.default_images_root()
    assert manifest.load(root, IMAGE).guest.tls_baked, "rebuild the image: make images"
    folder = Path(tempfile.mkdtemp(prefix="wtls-"))
    authority.init_ca(folder / "root")
    authority.init_host(folder / "root", "host-test", folder / "host")  # as an operator does
    issuer = authority.load_issuer(folder / "host")
    shutil.copy(folder / "host" / authority.ROOT_CERT, folder / "ca.pem")
    _other_key, other = authority.create_root(common_name="Someone else")
    (folder / "other.pem").write_bytes(authority.cert_pem(other))
    vm_id = f"tls{uuid.uuid4().hex[:8]}"
    spec = VMSpec(
        vm_id=vm_id, image=IMAGE, memory_mb=512, vcpus=1, disk_gb=3,
        hostname=f"vm-{vm_id}", admin_user=f"warren-{uuid.uuid4().hex[:6]}",
        admin_password=uuid.uuid4().hex,
        network=UserNet("127.0.0.1", free_port(), free_port(), amqps_port=free_port(),
                        https_port=free_port(), tls_gated=True),
    )  # fmt: skip
    net = spec.network
    assert isinstance(net, UserNet) and net.amqps_port and net.https_port
    public = (net.amqps_port, net.https_port)
    machine = QemuMachine(spec, folder / vm_id, root)
    try:
        assert machine.launch() == "restore", "the image's saved state must match"
        deadline = time.monotonic() + READY_SECONDS
        machine.wait_guest_agent(deadline)
        leaf = authority.issue(issuer, [server_name(vm_id)])  # as the host's names_for
        own = ssl.PEM_cert_to_DER_cert(leaf.cert_pem.decode())
        refused_before = {port: _refused(port) for port in public}
        throwaway = {
            p: tls_ports.served_certificate(machine.paths.qmp, p)
            for p in (TLS_AMQP_PORT, TLS_MANAGEMENT_PORT)
        }
        try:  # the gate: the throw-away answers, so no public port is opened
            machine.open_tls_ports(own)
            gate_error = ""
        except MachineError as exc:
            gate_error = str(exc)
        refused_before = {p: refused_before[p] and _refused(p) for p in public}
        timings: dict[str, float] = {}
        started = time.monotonic()
        guest_install.put(machine, leaf)  # as baked_tls.Early does
        timings["put"] = time.monotonic() - started
        errors: list[BaseException] = []

        def check() -> None:
            began = time.monotonic()
            try:
                machine.open_tls_ports(own)
            except BaseException as exc:  # noqa: BLE001 - reported by the fixture below
                errors.append(exc)
            timings["check"] = time.monotonic() - began

        thread = threading.Thread(target=check)
        thread.start()
        machine.personalize(deadline)
        machine.wait_management(machine.management_url(), deadline)
        waited = time.monotonic()
        thread.join()
        timings["ready_waited_for_check"] = time.monotonic() - waited
        assert not errors, (errors, rabbitmq_log_tail(machine))
        print("tls timings:", {k: round(v, 2) for k, v in timings.items()})
        yield TLSVM(
            machine, issuer, leaf, folder / "ca.pem", folder / "other.pem", folder, throwaway,
            refused_before, gate_error, timings,
        )  # fmt: skip
    finally:
        machine.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def _net(vm: TLSVM) -> UserNet:
    net = vm.machine.spec.network
    assert isinstance(net, UserNet)
    return net


def _name(vm: TLSVM) -> str:
    """The VM's own TLS name: reached on 127.0.0.1, verified for this name (docs/tls.md)."""
    return server_name(vm.machine.spec.vm_id)


def _amqps(vm: TLSVM, cafile: Path, server_hostname: str = "") -> pika.BlockingConnection:
    net = _net(vm)
    server_hostname = server_hostname or _name(vm)
    context = ssl.create_default_context(cafile=str(cafile))
    params = pika.ConnectionParameters(
        host="127.0.0.1", port=net.amqps_port,
        credentials=pika.PlainCredentials(vm.machine.spec.admin_user, vm.machine.spec.admin_password),
        ssl_options=pika.SSLOptions(context, server_hostname),
        socket_timeout=20, blocked_connection_timeout=30, connection_attempts=1,
    )  # fmt: skip
    return pika.BlockingConnection(params)


def _https(vm: TLSVM, verify: Path, name: str = "") -> requests.Response:
    net = _net(vm)
    spec = vm.machine.spec
    return named_session(name or _name(vm)).get(
        f"https://127.0.0.1:{net.https_port}/api/overview",
        auth=(spec.admin_user, spec.admin_password),
        verify=str(verify),
        timeout=30,
    )


def test_before_the_vm_s_own_certificate_the_public_tls_ports_refuse(vm: TLSVM) -> None:
    assert vm.refused_before and all(vm.refused_before.values()), vm.refused_before
    assert "does not serve the VM's certificate" in vm.gate_error


def _served(port: int, cafile: Path, host: str) -> bytes:
    """The certificate a verified client gets on the host's port (root and name checked)."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname=host) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_the_key_that_answers_is_the_vm_s_own(vm: TLSVM) -> None:
    net = _net(vm)
    assert net.amqps_port is not None and net.https_port is not None
    own_key = serialization.load_pem_private_key(vm.leaf.key_pem, None).public_key()
    issued = ssl.PEM_cert_to_DER_cert(vm.leaf.cert_pem.decode())
    for port, guest_port in (
        (net.amqps_port, TLS_AMQP_PORT),
        (net.https_port, TLS_MANAGEMENT_PORT),
    ):
        served = _served(
            port, vm.ca_file, _name(vm)
        )  # verified against Warren's root, for the VM's name
        assert served == issued
        cert = x509.load_der_x509_certificate(served)
        assert cert.public_key() == own_key  # the key the host made for this VM, nobody else's
        assert served != vm.throwaway[guest_port]
        throwaway = x509.load_der_x509_certificate(vm.throwaway[guest_port])
        assert throwaway.public_key() != own_key


def test_amqps_with_the_warren_ca_publishes_and_gets(vm: TLSVM) -> None:
    conn = _amqps(vm, vm.ca_file)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"over tls")
        _, _, body = ch.basic_get(queue, auto_ack=True)
        assert body == b"over tls"
    finally:
        conn.close()


def test_https_management_verifies_against_the_warren_ca(vm: TLSVM) -> None:
    answer = _https(vm, vm.ca_file)
    assert answer.status_code == 200
    assert answer.json()["rabbitmq_version"].startswith("4.0")


def test_another_ca_is_refused(vm: TLSVM) -> None:
    with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
        _https(vm, vm.other_ca_file)
    # The VM serves its leaf and the intermediate, never the root: a client that does not trust
    # Warren's root finds no issuer for the intermediate.
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _amqps(vm, vm.other_ca_file)


def test_another_name_is_refused(vm: TLSVM) -> None:
    # The certificate names the VM's own name only: "localhost" and the host's address (which
    # every VM of the host shares) reach the same server but are refused.
    for other in ("localhost", "127.0.0.1"):
        with pytest.raises(requests.exceptions.SSLError, match=re.escape(other)):
            _https(vm, vm.ca_file, name=other)
        with pytest.raises(
            ssl.SSLCertVerificationError, match=f"not valid for '{re.escape(other)}'"
        ):
            _amqps(vm, vm.ca_file, server_hostname=other)


def _served_serial(port: int, cafile: Path, name: str) -> int:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname=name) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_short_lived_certificate_is_renewed_by_the_daemon_without_a_restart(vm: TLSVM) -> None:
    net = _net(vm)
    assert net.amqps_port is not None and net.https_port is not None
    assert _served_serial(net.https_port, vm.ca_file, _name(vm)) == x509_serial(vm.leaf)
    conn = _amqps(vm, vm.ca_file)  # an open connection outlives the renewals
    try:
        # A two-minute certificate, written by hand: the next handshake reads it, nothing
        # restarts, nothing calls into the node (its PEM cache is off).
        short = authority.issue(vm.issuer, [_name(vm)], days=120 / 86400)
        guest_install.renew(vm.machine, short)
        assert _served_serial(net.https_port, vm.ca_file, _name(vm)) == x509_serial(short)
        assert _served_serial(net.amqps_port, vm.ca_file, _name(vm)) == x509_serial(short)
        # The daemon's renewal round: certificates last a day and are renewed in their last
        # 15 minutes, so the two-minute one is due; the customer does nothing.
        cfg = config.load(
            env={
                "WARREN_HOST_ID": "host-test",
                "WARREN_TLS_DIR": str(vm.folder / "host"),
                "WARREN_TLS_CERT_DAYS": "1",
                "WARREN_TLS_RENEW_BEFORE_DAYS": "0.01",
            }
        )
        registry = Registry(cfg, StateStore(vm.folder / "state"))
        spec = vm.machine.spec
        record = VMRecord(
            spec.vm_id, IMAGE, 512, 1, 3, spec.hostname, spec.admin_user, spec.admin_password,
            status=READY, tls_cert=short.cert_pem.decode(), tls_mode="baked",
        )  # fmt: skip
        registry.records[record.vm_id] = record
        renewer = certificates.Renewer(cfg, registry, lambda vm_id: vm.machine)
        assert renewer.run_once() == 1
        renewed = x509.load_pem_x509_certificate(record.tls_cert.encode())
        assert renewed.serial_number not in (x509_serial(short), x509_serial(vm.leaf))
        assert renewed.not_valid_after_utc > datetime.datetime.now(
            datetime.UTC
        ) + datetime.timedelta(hours=23)
        assert _served_serial(net.https_port, vm.ca_file, _name(vm)) == renewed.serial_number
        assert _served_serial(net.amqps_port, vm.ca_file, _name(vm)) == renewed.serial_number
        assert renewer.run_once() == 0  # not due any more
        assert conn.is_open
        conn.channel().queue_declare("", exclusive=True)
    finally:
        conn.close()


def x509_serial(leaf: authority.Leaf) -> int:
    return x509.load_pem_x509_certificate(leaf.cert_pem).serial_number


def test_the_node_serves_its_own_file_when_it_starts_again(vm: TLSVM) -> None:
    """What a start-vm or a heal does: the node reads the image's settings and the VM's file."""
    net = _net(vm)
    assert net.https_port is not None
    code, out = vm.machine.guest_exec(
        "/bin/sh", ["-c", "systemctl restart rabbitmq-server 2>&1"], timeout=900
    )
    assert code == 0, (out, rabbitmq_log_tail(vm.machine))
    vm.machine.wait_management(vm.machine.management_url(), time.monotonic() + 900)
    answer = _https(vm, vm.ca_file)
    assert answer.status_code == 200
    conn = _amqps(vm, vm.ca_file)
    conn.close()
