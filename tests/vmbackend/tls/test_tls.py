"""Warren's CA (vmbackend/tls/authority.py): issuance, chains a real TLS client verifies, renewal rules."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from vmbackend.tls import authority

NOW = datetime.datetime(2026, 11, 30, 21, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def issuer() -> authority.Issuer:
    root_key, root = authority.create_root()
    key, cert = authority.create_intermediate(root_key, root, "host-a")
    return authority.Issuer(key=key, cert=cert, root=root)


def _handshake(leaf: authority.Leaf, tmp: Path, *, cafile: Path, server_hostname: str) -> str:
    """A real TLS handshake over loopback: server with the leaf's key and chain, client
    verifying against `cafile` for `server_hostname`. The client's error text, or "ok"."""
    (tmp / "key.pem").write_bytes(leaf.key_pem)
    (tmp / "chain.pem").write_bytes(leaf.chain_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname):
                return "ok"
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message or str(exc)
    finally:
        thread.join(10)
        listener.close()


def _sans(leaf: authority.Leaf) -> list[object]:
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_a_leaf_names_the_hosts_and_addresses_of_the_urls(issuer: authority.Issuer) -> None:
    leaf = authority.issue(
        issuer, ["rabbit.warren.localhost", "127.0.0.1", "[::1]", "rabbit.warren.localhost"]
    )
    assert _sans(leaf) == [
        x509.DNSName("rabbit.warren.localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False


def test_a_leaf_lasts_the_days_asked_and_never_past_its_intermediate(
    issuer: authority.Issuer,
) -> None:
    leaf = authority.issue(issuer, ["127.0.0.1"], days=2, now=NOW)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=2)
    assert cert.not_valid_before_utc == NOW - authority.BACKDATE
    late = authority.issue(issuer, ["127.0.0.1"], days=100000)
    assert late.not_after == issuer.cert.not_valid_after_utc


def test_each_certificate_has_its_own_key(issuer: authority.Issuer) -> None:
    leaves = [authority.issue(issuer, ["127.0.0.1"]) for _ in range(5)]
    assert len({leaf.key_pem for leaf in leaves}) == 5
    publics = {
        x509.load_pem_x509_certificate(leaf.cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for leaf in leaves
    }
    assert len(publics) == 5


def test_a_client_with_the_root_accepts_the_chain(issuer: authority.Issuer, tmp_path: Path) -> None:
    leaf = authority.issue(issuer, ["a.warren.localhost", "127.0.0.1"])
    (tmp_path / "ca.pem").write_bytes(leaf.ca_pem)
    assert _handshake(leaf, tmp_path, cafile=tmp_path / "ca.pem", server_hostname="127.0.0.1") == (
        "ok"
    )
    assert _handshake(
        leaf, tmp_path, cafile=tmp_path / "ca.pem", server_hostname="a.warren.localhost"
    ) == ("ok")


def test_a_wrong_name_is_refused(issuer: authority.Issuer, tmp_path: Path) -> None:
    leaf = authority.issue(issuer, ["127.0.0.1"])
    (tmp_path / "ca.pem").write_bytes(leaf.ca_pem)
    error = _handshake(leaf, tmp_path, cafile=tmp_path / "ca.pem", server_hostname="localhost")
    assert "mismatch" in error.lower()


def test_another_ca_is_refused(issuer: authority.Issuer, tmp_path: Path) -> None:
    leaf = authority.issue(issuer, ["127.0.0.1"])
    _other_key, other = authority.create_root(common_name="Not Warren")
    (tmp_path / "other.pem").write_bytes(authority.cert_pem(other))
    error = _handshake(leaf, tmp_path, cafile=tmp_path / "other.pem", server_hostname="127.0.0.1")
    assert "unable to get local issuer certificate" in error


def test_an_expired_leaf_is_refused(issuer: authority.Issuer, tmp_path: Path) -> None:
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    leaf = authority.issue(issuer, ["127.0.0.1"], days=1, now=old)
    (tmp_path / "ca.pem").write_bytes(leaf.ca_pem)
    error = _handshake(leaf, tmp_path, cafile=tmp_path / "ca.pem", server_hostname="127.0.0.1")
    assert "expired" in error


def test_renewal_when_close_to_the_end_missing_or_renamed(issuer: authority.Issuer) -> None:
    margin = datetime.timedelta(days=30)
    leaf = authority.issue(issuer, ["127.0.0.1"], days=90, now=NOW)
    names = ["127.0.0.1"]
    assert not authority.needs_renewal(leaf.cert_pem, names, renew_before=margin, now=NOW)
    day_59 = NOW + datetime.timedelta(days=59, hours=23)
    assert not authority.needs_renewal(leaf.cert_pem, names, renew_before=margin, now=day_59)
    day_60 = NOW + datetime.timedelta(days=60)
    assert authority.needs_renewal(leaf.cert_pem, names, renew_before=margin, now=day_60)
    assert authority.needs_renewal(leaf.cert_pem, names, renew_before=margin, now=NOW + margin * 4)
    assert authority.needs_renewal(None, names, renew_before=margin, now=NOW)
    assert authority.needs_renewal(b"garbage", names, renew_before=margin, now=NOW)
    assert authority.needs_renewal(
        leaf.cert_pem, ["rabbit.example.com"], renew_before=margin, now=NOW
    )
    # The same names in another order or spelling are the same certificate.
    assert not authority.needs_renewal(
        leaf.cert_pem.decode(), [" 127.0.0.1"], renew_before=margin, now=NOW
    )


def test_a_short_lived_certificate_is_due_within_seconds(issuer: authority.Issuer) -> None:
    leaf = authority.issue(issuer, ["127.0.0.1"], days=60 / 86400, now=NOW)  # one minute
    margin = datetime.timedelta(seconds=20)
    assert not authority.needs_renewal(leaf.cert_pem, ["127.0.0.1"], renew_before=margin, now=NOW)
    later = NOW + datetime.timedelta(seconds=41)
    assert authority.needs_renewal(leaf.cert_pem, ["127.0.0.1"], renew_before=margin, now=later)


@given(st.lists(st.text(max_size=30), max_size=6))
def test_any_names_give_a_valid_san_list_or_a_clear_error(names: list[str]) -> None:
    try:
        sans = authority.general_names(names)
    except ValueError:
        # cryptography refuses non-ASCII DNS names (IDNA is the caller's business).
        return
    assert len(sans) == len({repr(s) for s in sans})


def test_no_names_is_an_error(issuer: authority.Issuer) -> None:
    with pytest.raises(authority.TLSError):
        authority.issue(issuer, ["", "  "])


def test_the_ca_and_host_files(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    authority.init_ca(ca, passphrase=b"correct horse")
    assert stat.S_IMODE(os.stat(ca / authority.ROOT_KEY).st_mode) == 0o600
    assert b"ENCRYPTED" in (ca / authority.ROOT_KEY).read_bytes()
    with pytest.raises(authority.TLSError, match="refusing"):
        authority.init_ca(ca)
    with pytest.raises(authority.TLSError, match="cannot load the key"):
        authority.init_host(ca, "host-a", tmp_path / "host", passphrase=b"wrong")
    authority.init_host(ca, "host-a", tmp_path / "host", passphrase=b"correct horse")
    assert stat.S_IMODE(os.stat(tmp_path / "host" / authority.HOST_KEY).st_mode) == 0o600
    issuer = authority.load_issuer(tmp_path / "host")
    assert issuer.root == x509.load_pem_x509_certificate((ca / authority.ROOT_CERT).read_bytes())
    leaf = authority.issue(issuer, ["127.0.0.1"])
    assert leaf.ca_pem == (ca / authority.ROOT_CERT).read_bytes()


def test_a_host_folder_signed_by_another_root_is_refused(tmp_path: Path) -> None:
    authority.init_ca(tmp_path / "ca")
    authority.init_host(tmp_path / "ca", "host-a", tmp_path / "host")
    authority.init_ca(tmp_path / "other")
    (tmp_path / "host" / authority.ROOT_CERT).write_bytes(
        (tmp_path / "other" / "ca.pem").read_bytes()
    )
    with pytest.raises(authority.TLSError, match="not signed"):
        authority.load_issuer(tmp_path / "host")
    with pytest.raises(authority.TLSError, match="cannot read"):
        authority.load_issuer(tmp_path / "nothing")
