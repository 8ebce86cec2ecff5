"""A customer's TLS server through the real host daemon (slow tier): a daemon with TLS on
(WARREN_TLS_DIR, an intermediate made by `tls init-ca` / `tls host`), a create-vm of the image new
orders get with a TLS-only plan (`plain-ports: false`), restored from the saved state; the
`instance.ready` URLs are amqps:// and https://, and a client that knows only those URLs and
Warren's root certificate connects with verification. The plain AMQP port is closed. One VM,
deleted at the end.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.parse
from pathlib import Path

import pika
import pytest

from tests.tls_clients import named_session
from tests.vmbackend.daemon_helpers import read_state, wait_host
from vmbackend.protocol import versions
from vmbackend.protocol.server_names import server_name
from vmbackend.tls import authority

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

IMAGE = versions.image_for(versions.DEFAULT_VERSION)
VM_ID = "vm-tls-real"
ADMIN = {"username": "warren-tlsreal", "password": "correct-horse-battery-tls"}
READY_SECONDS = 1500


def _served(port: int | None, cafile: Path, host: str | None, name: str) -> bytes:
    """The certificate a client reaching `host`:`port` and verifying against `cafile` for the
    server's own TLS name `name` is served (docs/tls.md)."""
    assert port is not None and host is not None
    context = ssl.create_default_context(cafile=str(cafile))
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname=name) as conn:
            der = conn.getpeercert(binary_form=True)
    print(f"verified handshake on {port}: {time.monotonic() - started:.3f} s")
    assert der is not None
    return der


def test_a_fresh_server_speaks_amqps_and_https_verified_by_warren_s_ca(
    daemons, client, tmp_path: Path
) -> None:
    authority.init_ca(tmp_path / "root")
    authority.init_host(tmp_path / "root", "tls-real", tmp_path / "host")
    ca_file = tmp_path / "root" / authority.ROOT_CERT  # what the order page offers
    daemon = daemons.start(extra_env={"WARREN_TLS_DIR": str(tmp_path / "host")})
    wait_host(client, daemon.host_id)
    options = {
        "image": IMAGE, "vm-id": VM_ID, "memory-mb": 512, "vcpus": 1, "disk-gb": 4,
        "admin": ADMIN, "plain-ports": False,
    }  # fmt: skip
    reply = client.call("create-vm", options, timeout=60)
    assert reply["execution-info"]["status"] == "success", reply
    try:
        ready = client.wait_event(VM_ID, ("instance.ready", "instance.failed"), READY_SECONDS)
        assert ready["type"] == "instance.ready", ready.get("reason", ready)
        print(f"ready over TLS: boot={ready['boot']} seconds={ready['seconds']}")
        assert ready["boot"] == "restore"
        amqp = urllib.parse.urlsplit(ready["amqp_url"])
        management = urllib.parse.urlsplit(ready["management_url"])
        assert (amqp.scheme, management.scheme) == ("amqps", "https")
        assert amqp.username == ADMIN["username"] and amqp.password is None

        context = ssl.create_default_context(cafile=str(ca_file))
        params = pika.ConnectionParameters(
            host=amqp.hostname, port=amqp.port,
            credentials=pika.PlainCredentials(ADMIN["username"], ADMIN["password"]),
            ssl_options=pika.SSLOptions(context, server_name(VM_ID)), socket_timeout=20,
            connection_attempts=3, retry_delay=2,
        )  # fmt: skip
        conn = pika.BlockingConnection(params)
        try:
            ch = conn.channel()
            queue = ch.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", queue, b"hello over amqps")
            assert ch.basic_get(queue, auto_ack=True)[2] == b"hello over amqps"
        finally:
            conn.close()

        # The URLs name the host's address; the certificate names the VM's own name only.
        answer = named_session(server_name(VM_ID)).get(
            urllib.parse.urljoin(ready["management_url"], "api/whoami"),
            auth=(ADMIN["username"], ADMIN["password"]),
            verify=str(ca_file),
            timeout=30,
        )
        assert answer.status_code == 200 and answer.json()["name"] == ADMIN["username"]

        # The plan's TLS only: nothing listens on the plain AMQP port any more.
        state = read_state(daemon.state_dir, VM_ID)
        assert state is not None and "BEGIN CERTIFICATE" in state["tls_cert"]
        # The image bakes the listeners in: the certificate both ports serve is the one the
        # daemon issued and recorded for this VM (its key never left the guest).
        assert state["tls_mode"] == "baked"
        recorded = ssl.PEM_cert_to_DER_cert(state["tls_cert"])
        assert _served(amqp.port, ca_file, amqp.hostname, server_name(VM_ID)) == recorded
        assert (
            _served(management.port, ca_file, management.hostname, server_name(VM_ID)) == recorded
        )
        assert "PRIVATE KEY" not in (daemon.state_dir / "vms" / f"{VM_ID}.json").read_text()
        with (
            pytest.raises(OSError),
            socket.create_connection(("127.0.0.1", state["ports"]["amqp"]), timeout=5) as plain,
        ):
            plain.sendall(b"AMQP\x00\x00\x09\x01")
            if not plain.recv(8):  # QEMU accepts, then the guest has no listener: closed
                raise ConnectionResetError("closed")
    finally:
        client.call("delete-vm", {"vm-id": VM_ID}, timeout=120)


def test_a_cold_booted_server_gets_its_certificate_once_its_node_answers(
    daemons, client, tmp_path: Path
) -> None:
    """A size the saved state does not match (768 MiB) boots cold: the certificate goes in once
    the management API answers, the plain ports stay open (the default plan)."""
    authority.init_ca(tmp_path / "root")
    authority.init_host(tmp_path / "root", "tls-cold", tmp_path / "host")
    ca_file = tmp_path / "root" / authority.ROOT_CERT
    env = {"WARREN_TLS_DIR": str(tmp_path / "host"), "WARREN_BOOT_DEADLINE": str(READY_SECONDS)}
    daemon = daemons.start(extra_env=env)  # a cold boot took over 300 s at load 14 here
    wait_host(client, daemon.host_id)
    vm_id = "vm-tls-cold"
    options = {
        "image": IMAGE, "vm-id": vm_id, "memory-mb": 768, "vcpus": 1, "disk-gb": 4,
        "admin": ADMIN,
    }  # fmt: skip
    reply = client.call("create-vm", options, timeout=60)
    assert reply["execution-info"]["status"] == "success", reply
    try:
        ready = client.wait_event(vm_id, ("instance.ready", "instance.failed"), READY_SECONDS)
        assert ready["type"] == "instance.ready", ready.get("reason", ready)
        print(f"ready over TLS: boot={ready['boot']} seconds={ready['seconds']}")
        assert ready["boot"] == "cold"
        management = urllib.parse.urlsplit(ready["management_url"])
        assert management.scheme == "https"
        answer = named_session(server_name(vm_id)).get(
            urllib.parse.urljoin(ready["management_url"], "api/overview"),
            auth=(ADMIN["username"], ADMIN["password"]),
            verify=str(ca_file),
            timeout=30,
        )
        assert answer.status_code == 200
        state = read_state(daemon.state_dir, vm_id)
        assert state is not None and state["tls_mode"] == "baked"
        recorded = ssl.PEM_cert_to_DER_cert(state["tls_cert"])
        assert (
            _served(management.port, ca_file, management.hostname, server_name(vm_id)) == recorded
        )
        # The default plan keeps the plain AMQP port: a client without TLS still connects.
        params = pika.ConnectionParameters(
            host="127.0.0.1", port=state["ports"]["amqp"],
            credentials=pika.PlainCredentials(ADMIN["username"], ADMIN["password"]),
            socket_timeout=20, connection_attempts=3, retry_delay=2,
        )  # fmt: skip
        pika.BlockingConnection(params).close()
    finally:
        client.call("delete-vm", {"vm-id": vm_id}, timeout=120)
