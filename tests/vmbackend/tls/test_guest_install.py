"""The VM's server.pem for images with baked TLS (vmbackend/tls/guest_install.py): what the
host writes into the guest, as data. In a real guest: tls/test_tls_slow.py."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from vmbackend.tls import authority, guest_install

NOT_AFTER = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def issuer() -> authority.Issuer:
    root_key, root = authority.create_root(common_name="Test root")
    key, cert = authority.create_intermediate(root_key, root, "host-t")
    return authority.Issuer(key=key, cert=cert, root=root)


def test_server_pem_is_the_key_then_the_leaf_then_the_intermediate(
    issuer: authority.Issuer,
) -> None:
    leaf = authority.issue(issuer, ["vm.warren.localhost"])  # inside the CA's names
    data = guest_install.server_pem(leaf)
    blocks = [b + b"-----\n" for b in data.split(b"-----\n-----BEGIN")]
    key = serialization.load_pem_private_key(data, None)
    certs = x509.load_pem_x509_certificates(data[data.index(b"-----BEGIN CERTIFICATE") :])
    assert [c.subject for c in certs] == [
        x509.load_pem_x509_certificate(leaf.cert_pem).subject,
        issuer.cert.subject,
    ]  # the chain a client needs, never the root
    assert certs[0].public_key() == key.public_key()
    assert len(blocks) == 3


class _Written:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def write_guest_file(self, path: str, data: bytes) -> None:
        self.files[path] = data


def test_put_writes_the_one_file_the_listeners_read(issuer: authority.Issuer) -> None:
    leaf = authority.issue(issuer, ["vm.warren.localhost"])  # inside the CA's names
    guest = _Written()
    guest_install.put(guest, leaf)
    assert guest.files == {guest_install.SERVER_PEM: guest_install.server_pem(leaf)}


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_anything_but_one_key_and_one_certificate_is_refused(key: bytes, cert: bytes) -> None:
    leaf = authority.Leaf(key, cert, cert + b"x", b"", NOT_AFTER)
    ok = key.startswith(b"-----BEGIN ") and cert.count(b"-----BEGIN ") == 1
    if ok:
        assert guest_install.server_pem(leaf) == key + cert + b"x"
    else:
        with pytest.raises(guest_install.GuestTLSError):
            guest_install.server_pem(leaf)

    other = authority.Leaf(key, cert, b"y" + cert, b"", NOT_AFTER)
    with pytest.raises(guest_install.GuestTLSError):  # the leaf must come first in the chain
        guest_install.server_pem(other)
