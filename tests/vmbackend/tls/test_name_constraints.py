"""Warren's CA signs only for Warren's servers (issue 20, section 2), shown with real TLS
handshakes on loopback: Python's ssl (OpenSSL) verifies the chains the product's CA code makes.

- Each VM's certificate names only its own `<short-id>.<domain>`: VM B's key cannot answer a
  client that verifies A's name, though both sit on the same host address.
- The root and each host intermediate carry critical name constraints: a leaf for an outside
  DNS name or address, signed with a host intermediate's key *around* the product's own check
  (as a thief of that key would), does not verify against the root.
- The issuer refuses outside names in code too, before signing.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import given
from hypothesis import strategies as st

from vmbackend.host import certificates, config
from vmbackend.host.state import VMRecord
from vmbackend.protocol.server_names import server_name
from vmbackend.tls import authority
from vmbackend.tls.scope import Scope, parse_networks, scope_of

DOMAIN = "servers.warren.test"
SCOPE = Scope(DOMAIN, parse_networks("127.0.0.0/8,::1/128"))


@pytest.fixture(scope="module")
def issuer() -> authority.Issuer:
    root_key, root = authority.create_root(scope=SCOPE)
    key, cert = authority.create_intermediate(root_key, root, "host-a")
    return authority.Issuer(key=key, cert=cert, root=root)


def handshake(chain_pem: bytes, key_pem: bytes, ca_pem: bytes, tmp: Path, name: str) -> str:
    """Serve `chain_pem` on loopback; a client trusting only `ca_pem` connects and verifies
    `name` (SNI and the hostname check). "ok", or OpenSSL's verify message."""
    (tmp / "chain.pem").write_bytes(chain_pem)
    (tmp / "key.pem").write_bytes(key_pem)
    (tmp / "ca.pem").write_bytes(ca_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=name):
                return "ok"
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message or str(exc)
    finally:
        thread.join(10)
        listener.close()


def forged_leaf(issuer: authority.Issuer, sans: list[x509.GeneralName], cn: str) -> bytes:
    """What a thief of the host key could sign: a server certificate built directly with the
    intermediate's key, skipping authority.issue's check. Returns the chain (leaf, then
    intermediate) for the key in `issuer` reused as the leaf key (fine for a handshake)."""
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.cert.subject)
        .public_key(issuer.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return authority.cert_pem(cert) + authority.cert_pem(issuer.cert)


def _issuer_key_pem(issuer: authority.Issuer) -> bytes:
    return authority.key_pem(issuer.key)


def test_root_and_intermediate_carry_critical_name_constraints(
    issuer: authority.Issuer,
) -> None:
    for cert in (issuer.root, issuer.cert):
        ext = cert.extensions.get_extension_for_class(x509.NameConstraints)
        assert ext.critical
        assert scope_of(cert) == SCOPE


def test_vm_b_cannot_answer_for_vm_a_s_name(issuer: authority.Issuer, tmp_path: Path) -> None:
    """Both VMs on one host, one address: the names from the host's own policy differ, and a
    client verifying A's name refuses B's certificate."""
    cfg = config.load(env={"WARREN_HOST_ID": "host-a", "WARREN_VM_DOMAIN": DOMAIN})
    a = VMRecord("vm-a", "rabbitmq-4.0", 512, 1, 4, "vm-a", "warren-a", "pw")
    b = VMRecord("vm-b", "rabbitmq-4.0", 512, 1, 4, "vm-b", "warren-b", "pw")
    leaf_a = authority.issue(issuer, certificates.names_for(cfg, a))
    leaf_b = authority.issue(issuer, certificates.names_for(cfg, b))
    name_a = server_name("vm-a", DOMAIN)
    assert handshake(leaf_a.chain_pem, leaf_a.key_pem, leaf_a.ca_pem, tmp_path, name_a) == "ok"
    refused = handshake(leaf_b.chain_pem, leaf_b.key_pem, leaf_b.ca_pem, tmp_path, name_a)
    assert "mismatch" in refused.lower()
    # Nor does B answer for the host's shared address: no certificate carries it.
    refused = handshake(leaf_b.chain_pem, leaf_b.key_pem, leaf_b.ca_pem, tmp_path, "127.0.0.1")
    assert "mismatch" in refused.lower()


def test_a_forged_leaf_for_an_inside_name_verifies(
    issuer: authority.Issuer, tmp_path: Path
) -> None:
    """The control for the two below: the forging itself makes a chain OpenSSL accepts."""
    name = f"x.{DOMAIN}"
    chain = forged_leaf(issuer, [x509.DNSName(name)], name)
    assert (
        handshake(chain, _issuer_key_pem(issuer), authority.cert_pem(issuer.root), tmp_path, name)
        == "ok"
    )


@pytest.mark.parametrize(
    "name", ["www.google.com", f"{DOMAIN}.attacker.example", f"x{DOMAIN}", "warren.test"]
)
def test_a_leaf_for_an_outside_name_does_not_verify(
    issuer: authority.Issuer, tmp_path: Path, name: str
) -> None:
    chain = forged_leaf(issuer, [x509.DNSName(name)], name)
    error = handshake(
        chain, _issuer_key_pem(issuer), authority.cert_pem(issuer.root), tmp_path, name
    )
    assert "subtree violation" in error, error


@pytest.mark.parametrize("address", ["192.0.2.1", "8.8.8.8", "2001:db8::1"])
def test_a_leaf_for_an_outside_address_does_not_verify(
    issuer: authority.Issuer, tmp_path: Path, address: str
) -> None:
    ip = ipaddress.ip_address(address)
    chain = forged_leaf(issuer, [x509.IPAddress(ip)], f"x.{DOMAIN}")
    error = handshake(
        chain, _issuer_key_pem(issuer), authority.cert_pem(issuer.root), tmp_path, address
    )
    assert "subtree violation" in error, error


def test_the_root_s_constraint_holds_even_for_an_unconstrained_intermediate(
    tmp_path: Path,
) -> None:
    """An intermediate signed by the root without constraints (an old one, or a mistake): the
    root's own constraint still stops an outside name."""
    root_key, root = authority.create_root(scope=SCOPE)
    key, cert = authority.create_intermediate(root_key, root, "host-b")
    bare = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    assert scope_of(bare) is None
    unconstrained = authority.Issuer(key=key, cert=bare, root=root)
    chain = forged_leaf(unconstrained, [x509.DNSName("www.google.com")], "www.google.com")
    error = handshake(
        chain, authority.key_pem(key), authority.cert_pem(root), tmp_path, "www.google.com"
    )
    assert "subtree violation" in error, error


@pytest.mark.parametrize("name", ["www.google.com", "192.0.2.1", f"{DOMAIN}.evil.example"])
def test_the_issuer_refuses_outside_names_before_signing(
    issuer: authority.Issuer, name: str
) -> None:
    with pytest.raises(authority.TLSError, match="outside this CA's names"):
        authority.issue(issuer, [server_name("vm-a", DOMAIN), name])


_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z")


@given(labels=st.lists(_label, min_size=1, max_size=4), inside=st.booleans())
def test_the_code_check_agrees_with_the_constraint(
    issuer: authority.Issuer, labels: list[str], inside: bool
) -> None:
    """issue() signs exactly the DNS names the constraint permits (RFC 5280: the domain itself
    or a name ending in "." + the domain)."""
    name = ".".join(labels) + ("." + DOMAIN if inside else ".example.org")
    if inside:
        leaf = authority.issue(issuer, [name])
        assert x509.load_pem_x509_certificate(leaf.cert_pem).subject
    else:
        with pytest.raises(authority.TLSError):
            authority.issue(issuer, [name])


def test_a_daemon_warns_about_a_ca_without_constraints_and_refuses_an_outside_domain(
    issuer: authority.Issuer,
) -> None:
    assert authority.check_scope(issuer, DOMAIN) == ""
    assert authority.check_scope(issuer, f"eu.{DOMAIN}") == ""
    with pytest.raises(authority.TLSError, match="outside this CA's names"):
        authority.check_scope(issuer, "servers.example.com")
    root_key, root = authority.create_root(scope=SCOPE)
    key, cert = authority.create_intermediate(root_key, root, "host-c")
    old = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .sign(root_key, hashes.SHA256())
    )
    warning = authority.check_scope(authority.Issuer(key=key, cert=old, root=root), DOMAIN)
    assert "no name constraints" in warning
