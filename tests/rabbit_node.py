"""A private RabbitMQ node for one test: its own node name, ports, database and logs in a
temporary folder, optionally with a TLS listener from a test CA made here.

The machine's own broker (rabbit@localhost, 5672) is never touched. The node runs as this user
with HOME in the node's folder, so it has an Erlang cookie of its own, and `ctl()` runs
rabbitmqctl with the same HOME. Later tests start several of these (a cluster) the same way.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.net import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves, not the su wrappers
START_TIMEOUT = 120.0


@dataclass
class TestCA:
    """A CA and a server certificate for localhost/127.0.0.1, as PEM files in `folder`."""

    folder: Path
    ca_cert: Path = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {uuid.uuid4()}")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_cert = self.folder / "ca.pem"
        self.server_cert = self.folder / "server.pem"
        self.server_key = self.folder / "server.key"
        self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self.server_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.server_key.chmod(0o600)


@dataclass
class RabbitNode:
    """One running node; `stop()` (or the context manager) ends it and removes its folder."""

    folder: Path
    name: str
    port: int
    tls_port: int | None
    proc: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        return node_environment(self.folder, self.name, self.port)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout

    def url(self, user: str = "guest", password: str = "guest", *, tls: bool = False) -> str:
        if tls:
            return f"amqps://{user}:{password}@localhost:{self.tls_port}/%2F"
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/%2F"

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ctl("stop", timeout=60)
            except (subprocess.SubprocessError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> RabbitNode:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def node_environment(folder: Path, name: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(folder),
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(port + 20000) if port < 45535 else str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(folder / "rabbit.pid"),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
    }


def start_node(*, ca: TestCA | None = None, prefix: str = "warren-test") -> RabbitNode:
    """Start a node (with a TLS listener signed by `ca` when given) and wait until it runs."""
    folder = Path(tempfile.mkdtemp(prefix="rabbit-"))
    name = f"{prefix}-{uuid.uuid4().hex[:8]}@localhost"
    port = free_port()
    tls_port = free_port() if ca is not None else None
    lines = [f"listeners.tcp.default = 127.0.0.1:{port}", "loopback_users = none"]
    if ca is not None:
        lines += [
            f"listeners.ssl.default = 127.0.0.1:{tls_port}",
            f"ssl_options.cacertfile = {ca.ca_cert}",
            f"ssl_options.certfile = {ca.server_cert}",
            f"ssl_options.keyfile = {ca.server_key}",
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
    (folder / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
    (folder / "enabled_plugins").write_text("[].\n")
    (folder / "rabbitmq-env.conf").write_text("")
    (folder / "advanced.config").write_text("[].\n")
    log = open(folder / "server.out", "ab")  # noqa: SIM115 - the node outlives this call
    proc = subprocess.Popen(
        [str(RABBIT_BIN / "rabbitmq-server")],
        env=node_environment(folder, name, port),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    node = RabbitNode(folder=folder, name=name, port=port, tls_port=tls_port, proc=proc)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            node.ctl("await_startup", "--timeout", "10", timeout=30)
            return node
        except subprocess.SubprocessError:
            if proc.poll() is not None or time.monotonic() > deadline:
                output = (folder / "server.out").read_text(errors="replace")[-2000:]
                node.stop()
                raise RuntimeError(f"RabbitMQ node {name} did not start:\n{output}") from None
            time.sleep(1)
