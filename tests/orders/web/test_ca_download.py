"""The CA certificate download (orders.web.orders.ca_certificate) and its link on the order page."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from orders.models import Instance, Order
from store.models import Plan
from vmbackend.protocol.server_names import server_name
from vmbackend.tls import authority as tls

pytestmark = pytest.mark.django_db


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    tls.init_ca(tmp_path / "ca")
    return tmp_path / "ca" / tls.ROOT_CERT


def _ready_order(amqp_url: str, management_url: str) -> Order:
    user = get_user_model().objects.create_user("ca-owner", "o@example.com", "pw-123456789")
    plan = Plan.objects.create(
        slug="bunny", name="Bunny", memory_mb=512, vcpus=1, disk_gb=4,
        max_connections=100, max_queues=200, monthly_price_cents=900,
    )  # fmt: skip
    order = Order.objects.create(
        user=user, plan=plan, status=Order.Status.READY, paid_at=timezone.now()
    )
    Instance.objects.create(
        order=order,
        admin_username="warren-abc123",
        admin_password="s3cret-Admin-Pa55word-xyz",
        status=Instance.Status.READY,
        management_url=management_url,
        amqp_url=amqp_url,
    )
    return order


def test_anyone_downloads_the_root_certificate(client: Client, ca_file: Path) -> None:
    with override_settings(CA_CERT=str(ca_file)):
        response = client.get(reverse("orders:ca_certificate"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-pem-file"
    assert 'filename="warren-ca.pem"' in response["Content-Disposition"]
    cert = x509.load_pem_x509_certificate(response.content)
    assert cert == x509.load_pem_x509_certificate(ca_file.read_bytes())


def test_only_certificates_leave_the_file_never_a_key(client: Client, tmp_path: Path) -> None:
    # An operator who points WARREN_CA_CERT at a file with the key in it by mistake.
    tls.init_ca(tmp_path / "ca")
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(
        (tmp_path / "ca" / tls.ROOT_KEY).read_bytes() + (tmp_path / "ca" / "ca.pem").read_bytes()
    )
    with override_settings(CA_CERT=str(mixed)):
        response = client.get(reverse("orders:ca_certificate"))
    assert response.status_code == 200
    assert b"PRIVATE KEY" not in response.content
    assert b"BEGIN CERTIFICATE" in response.content


@pytest.mark.parametrize("setting", ["", "/nonexistent/ca.pem", "not-a-cert"])
def test_no_configured_certificate_is_a_404(client: Client, tmp_path: Path, setting: str) -> None:
    if setting == "not-a-cert":
        (tmp_path / "x.pem").write_text("hello")
        setting = str(tmp_path / "x.pem")
    with override_settings(CA_CERT=setting):
        response = client.get(reverse("orders:ca_certificate"))
    assert response.status_code == 404


def test_only_get(client: Client, ca_file: Path) -> None:
    with override_settings(CA_CERT=str(ca_file)):
        assert client.post(reverse("orders:ca_certificate")).status_code == 405


def test_a_tls_server_s_page_links_the_certificate(client: Client, ca_file: Path) -> None:
    order = _ready_order("amqps://warren-abc123@127.0.0.1:5701/", "https://127.0.0.1:15001/")
    client.force_login(order.user)
    with override_settings(CA_CERT=str(ca_file)):
        html = client.get(reverse("orders:detail", args=[order.public_id])).content.decode()
    assert "amqps://warren-abc123@127.0.0.1:5701/" in html
    # The server's own name on loopback (*.localhost resolves there; orders/web/connect.py).
    name = server_name(order.instance.vm_id, "warren.localhost")
    assert f'href="https://{name}:15001/"' in html
    assert f'href="{reverse("orders:ca_certificate")}"' in html


def test_a_plain_server_or_no_ca_has_no_link(client: Client, ca_file: Path) -> None:
    order = _ready_order("amqp://warren-abc123@127.0.0.1:5701/", "http://127.0.0.1:15001/")
    client.force_login(order.user)
    url = reverse("orders:detail", args=[order.public_id])
    with override_settings(CA_CERT=str(ca_file)):
        assert 'id="ca-certificate"' not in client.get(url).content.decode()
    Instance.objects.filter(order=order).update(amqp_url="amqps://warren-abc123@127.0.0.1:5701/")
    with override_settings(CA_CERT=""):
        assert 'id="ca-certificate"' not in client.get(url).content.decode()
