"""The order page's TLS name (orders/web/connect.py): each server's own name, and curl and pika
lines that work where the name does not resolve, run for real against loopback TLS servers
made with the product's CA (issue 20, section 2; docs/tls.md)."""

from __future__ import annotations

import contextlib
import html
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from orders.models import Instance, Order
from store.models import Plan
from tests.tls_clients import named_session
from vmbackend.protocol.server_names import server_name
from vmbackend.tls import authority
from vmbackend.tls.scope import Scope, parse_networks

pytestmark = pytest.mark.django_db
DOMAIN = "servers.warren.test"


@pytest.fixture(scope="module")
def issuer() -> authority.Issuer:
    root_key, root = authority.create_root(
        scope=Scope(DOMAIN, parse_networks("127.0.0.0/8,::1/128"))
    )
    key, cert = authority.create_intermediate(root_key, root, "host-a")
    return authority.Issuer(key=key, cert=cert, root=root)


def _order(client: Client, amqp_url: str, management_url: str, username: str = "guest") -> Instance:
    user = get_user_model().objects.create_user("tls-owner", "t@example.com", "pw-123456789")
    plan = Plan.objects.create(
        slug="bunny", name="Bunny", memory_mb=512, vcpus=1, disk_gb=4,
        max_connections=100, max_queues=200, monthly_price_cents=900,
    )  # fmt: skip
    order = Order.objects.create(
        user=user, plan=plan, status=Order.Status.READY, paid_at=timezone.now()
    )
    client.force_login(user)
    return Instance.objects.create(
        order=order,
        admin_username=username,
        admin_password="guest",
        status=Instance.Status.READY,
        management_url=management_url,
        amqp_url=amqp_url,
    )


def _page(client: Client, instance: Instance) -> str:
    response = client.get(reverse("orders:detail", args=[instance.order.public_id]))
    assert response.status_code == 200
    return response.content.decode()


def _code(page: str, element_id: str) -> str:
    match = re.search(rf'<code id="{element_id}">(.*?)</code>', page, re.S)
    assert match, element_id
    return html.unescape(match.group(1))


def _context(cert_dir: Path, leaf: authority.Leaf) -> ssl.SSLContext:
    (cert_dir / "chain.pem").write_bytes(leaf.chain_pem)
    (cert_dir / "key.pem").write_bytes(leaf.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_dir / "chain.pem", cert_dir / "key.pem")
    return ctx


@contextlib.contextmanager
def tls_to_broker(ctx: ssl.SSLContext) -> Iterator[int]:
    """A TLS listener on loopback that forwards to the real broker (127.0.0.1:5672): plays a
    server's amqps port with the certificate in `ctx`."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                tls = ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            broker = socket.create_connection(("127.0.0.1", 5672), timeout=10)
            threading.Thread(target=pipe, args=(tls, broker), daemon=True).start()
            threading.Thread(target=pipe, args=(broker, tls), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@contextlib.contextmanager
def https_server(ctx: ssl.SSLContext) -> Iterator[int]:
    class Overview(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b'{"management_version": "test"}'
            self.send_response(200 if self.headers.get("Authorization") else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Overview)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_pika(example: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = example.replace(":PASSWORD@", ":guest@") + "\nconnection.close()\nprint('connected')\n"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@override_settings(VM_DOMAIN=DOMAIN)
def test_the_page_s_name_and_examples_reach_the_server_and_verify_it(
    client: Client, issuer: authority.Issuer, tmp_path: Path
) -> None:
    (tmp_path / "warren-ca.pem").write_bytes(authority.cert_pem(issuer.root))
    probe = _order(client, "amqps://guest@127.0.0.1:1/", "https://127.0.0.1:1/")
    name = server_name(probe.vm_id, DOMAIN)
    leaf = authority.issue(issuer, [name])  # what the host issues this VM (names_for)
    ctx = _context(tmp_path, leaf)
    with tls_to_broker(ctx) as amqps_port, https_server(ctx) as https_port:
        probe.amqp_url = f"amqps://guest@127.0.0.1:{amqps_port}/"
        probe.management_url = f"https://127.0.0.1:{https_port}/"
        probe.save()
        page = _page(client, probe)
        assert _code(page, "tls-name") == name
        assert "connect to 127.0.0.1 and verify this name" in " ".join(page.split())

        pika_run = _run_pika(_code(page, "pika-example"), tmp_path)
        assert pika_run.returncode == 0 and "connected" in pika_run.stdout, pika_run.stderr

        curl = _code(page, "curl-example").replace("-u guest ", "-u guest:guest ")
        assert curl.startswith("curl --cacert warren-ca.pem --connect-to ")
        done = subprocess.run(
            [*curl.split(), "-sS", "-o", "/dev/null", "-w", "%{http_code}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.stdout == "200", done.stderr
        # The tests' own client for the same recipe (tests/tls_clients.py).
        answer = named_session(name).get(
            f"https://127.0.0.1:{https_port}/", auth=("guest", "guest"),
            verify=str(tmp_path / "warren-ca.pem"), timeout=30,
        )  # fmt: skip
        assert answer.status_code == 200


@override_settings(VM_DOMAIN=DOMAIN)
def test_another_server_s_certificate_fails_the_page_s_pika_example(
    client: Client, issuer: authority.Issuer, tmp_path: Path
) -> None:
    (tmp_path / "warren-ca.pem").write_bytes(authority.cert_pem(issuer.root))
    other = authority.issue(issuer, [server_name("another-vm", DOMAIN)])
    with tls_to_broker(_context(tmp_path, other)) as port:
        instance = _order(client, f"amqps://guest@127.0.0.1:{port}/", "https://127.0.0.1:1/")
        run = _run_pika(_code(_page(client, instance), "pika-example"), tmp_path)
    assert run.returncode != 0
    assert "Hostname mismatch" in run.stderr or "not valid for" in run.stderr, run.stderr[-500:]


def test_on_the_one_box_system_the_management_link_uses_the_name(client: Client) -> None:
    """*.localhost resolves to loopback in browsers and curl: the link verifies as it is."""
    instance = _order(client, "amqps://guest@127.0.0.1:20002/", "https://127.0.0.1:20003/")
    page = _page(client, instance)
    name = server_name(instance.vm_id, "warren.localhost")
    assert f'href="https://{name}:20003/"' in page
    assert _code(page, "tls-name") == name


def test_a_public_address_keeps_the_address_in_the_link(client: Client) -> None:
    instance = _order(client, "amqps://guest@203.0.113.5:20002/", "https://203.0.113.5:20003/")
    page = _page(client, instance)
    assert 'href="https://203.0.113.5:20003/"' in page
    assert "--connect-to " in _code(page, "curl-example")


@pytest.mark.parametrize(
    ("amqp_url", "management_url"),
    [
        ("amqp://guest@127.0.0.1:20002/", "http://127.0.0.1:20003/"),  # no TLS: no name
        ("amqps://guest@127.0.0.1:99999/", "https://127.0.0.1:99999/"),  # stored nonsense
        ("amqps://guest@127.0.0.1/", "https://127.0.0.1/"),  # no port
    ],
)
def test_without_a_usable_tls_url_the_page_shows_no_name_and_does_not_fail(
    client: Client, amqp_url: str, management_url: str
) -> None:
    instance = _order(client, amqp_url, management_url)
    assert 'id="tls-name"' not in _page(client, instance)
