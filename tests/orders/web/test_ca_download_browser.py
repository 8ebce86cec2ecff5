"""The CA certificate link of a TLS server's order page in a real browser (headless Debian
Chromium, Playwright) at phone (390 px) and desktop widths: shown with the amqps:// and https://
URLs, inside the viewport, and a click downloads Warren's root certificate."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from playwright.sync_api import Page, expect

from orders.models import Instance
from tests.orders.console.test_console_browser import _fits, _log_in, _reachable, _ready_order
from tests.orders.console.test_console_browser import page as page  # noqa: F401 - the fixture
from tests.orders.web.test_pages_browser import _shot
from vmbackend.tls import authority as tls

pytestmark = pytest.mark.browser


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_tls_server_s_page_offers_the_root_certificate(
    live_server, page: Page, django_user_model, settings, tmp_path: Path
) -> None:
    tls.init_ca(tmp_path / "ca")
    settings.CA_CERT = str(tmp_path / "ca" / tls.ROOT_CERT)
    instance = _ready_order(django_user_model, "tess")
    Instance.objects.filter(pk=instance.pk).update(
        management_url="https://rabbit-7.example.com:20443/",
        amqp_url=f"amqps://{instance.admin_username}@rabbit-7.example.com:20671/",
    )
    _log_in(page, live_server, instance)
    expect(page.locator("#amqp-url")).to_contain_text("amqps://")
    expect(page.locator("#management-url")).to_have_attribute(
        "href", "https://rabbit-7.example.com:20443/"
    )
    _fits(page)
    _reachable(page, "#ca-certificate")
    _shot(page, f"ca-link-{page.width_name}")  # type: ignore[attr-defined]
    with page.expect_download() as info:
        page.click("#ca-certificate")
    download = info.value
    assert download.suggested_filename == "warren-ca.pem"
    saved = tmp_path / "downloaded.pem"
    download.save_as(saved)
    assert x509.load_pem_x509_certificate(saved.read_bytes()) == x509.load_pem_x509_certificate(
        (tmp_path / "ca" / tls.ROOT_CERT).read_bytes()
    )
