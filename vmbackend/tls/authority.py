"""Warren's own certificate authority: a root, one intermediate per host, one leaf per VM.

Why this shape (docs/tls.md): the root key signs only intermediates, a few times a year, so it
stays offline with the operator (`python -m vmbackend tls init-ca`, key file 0600, encrypted
with WARREN_CA_PASSPHRASE when set). Each host holds only its own intermediate's key (it signs its
VMs' certificates at boot, restore and renewal); a stolen host key is revoked by not trusting
that intermediate again, without re-keying every VM of the fleet. Every VM gets a fresh key made
here, on the host, at the moment of issue: never in an image, never in a saved state.

Pure functions over `cryptography` objects, plus small file helpers; no QEMU, no broker.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmbackend.files import write_atomic
from vmbackend.tls.scope import DEFAULT_DOMAIN, DEFAULT_NETWORKS, Scope, parse_networks, scope_of

ROOT_CERT = "ca.pem"
ROOT_KEY = "ca.key"
HOST_CERT = "host.pem"
HOST_KEY = "host.key"
ROOT_DAYS = 3650
HOST_DAYS = 1825
LEAF_DAYS = 90.0
RENEW_BEFORE_DAYS = 30.0
# notBefore is set this far in the past: a guest or client clock slightly behind still accepts it.
BACKDATE = datetime.timedelta(minutes=5)
ORGANIZATION = "Warren"
DEFAULT_SCOPE = Scope(DEFAULT_DOMAIN, parse_networks(",".join(DEFAULT_NETWORKS)))

PrivateKey = ec.EllipticCurvePrivateKey


class TLSError(Exception):
    """A CA file is missing, unreadable or does not fit; the message names the file."""


@dataclass(frozen=True)
class Issuer:
    """A host's intermediate: its key, its certificate and the root above it."""

    key: PrivateKey
    cert: x509.Certificate
    root: x509.Certificate


@dataclass(frozen=True)
class Leaf:
    """A VM's key and certificate, PEM; `chain_pem` is the leaf, then the intermediate."""

    key_pem: bytes
    cert_pem: bytes
    chain_pem: bytes
    ca_pem: bytes
    not_after: datetime.datetime


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key() -> PrivateKey:
    """A fresh P-256 key: small, fast to make (a VM's boot pays for one) and accepted everywhere."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def create_root(
    *,
    common_name: str = "Warren Root CA",
    days: int = ROOT_DAYS,
    now: datetime.datetime | None = None,
    scope: Scope = DEFAULT_SCOPE,
) -> tuple[PrivateKey, x509.Certificate]:
    """A self-signed root that may sign one level of intermediates (pathlen 1), for names in
    `scope` only (critical name constraints: vmbackend/tls/scope.py)."""
    now = now or _utcnow()
    key = new_key()
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(scope.constraints(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def create_intermediate(
    root_key: PrivateKey,
    root: x509.Certificate,
    host_id: str,
    *,
    days: int = HOST_DAYS,
    now: datetime.datetime | None = None,
    scope: Scope | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """A host's intermediate (pathlen 0: it signs VMs' certificates only), never outliving the
    root, constrained to the root's scope (`scope` only for a root made without one)."""
    scope = scope_of(root) or scope or DEFAULT_SCOPE
    now = now or _utcnow()
    key = new_key()
    not_after = min(now + datetime.timedelta(days=days), root.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"Warren host {host_id}"))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(scope.constraints(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(_aki(root), False)
        .sign(root_key, hashes.SHA256())
    )
    return key, cert


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """SubjectAltName entries: an IP address as iPAddress, anything else as a DNS name.
    Duplicates and empty names are dropped; order kept."""
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in names:
        name = raw.strip().strip("[]").lower()
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue(
    issuer: Issuer,
    names: Sequence[str],
    *,
    days: float = LEAF_DAYS,
    now: datetime.datetime | None = None,
) -> Leaf:
    """A server certificate for `names` (the host names and addresses in the VM's URLs) with a
    key made now. Never outlives the intermediate. A name outside the intermediate's scope is
    refused here, before signing (verifiers would refuse the chain anyway)."""
    sans = general_names(names)
    if not sans:
        raise TLSError("a certificate needs at least one name")
    scope = scope_of(issuer.cert)
    outside = [str(n.value) for n in sans if scope is not None and not scope.permits(n)]
    if outside:
        assert scope is not None
        raise TLSError(f"{', '.join(outside)} outside this CA's names ({scope.describe()})")
    now = now or _utcnow()
    key = new_key()
    not_after = min(now + datetime.timedelta(days=days), issuer.cert.not_valid_after_utc)
    first = sans[0].value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(str(first)))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(_aki(issuer.cert), False)
        .sign(issuer.key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    return Leaf(
        key_pem=key_pem(key),
        cert_pem=cert_pem,
        chain_pem=cert_pem + issuer.cert.public_bytes(serialization.Encoding.PEM),
        ca_pem=issuer.root.public_bytes(serialization.Encoding.PEM),
        not_after=not_after,
    )


def needs_renewal(
    cert_pem: bytes | str | None,
    names: Sequence[str],
    *,
    renew_before: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> bool:
    """Whether a VM's certificate must be replaced: none or unreadable, within `renew_before` of
    its end (or past it), or its names are not exactly `names` (the advertised host changed)."""
    if not cert_pem:
        return True
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    try:
        cert = x509.load_pem_x509_certificate(data)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return True
    now = now or _utcnow()
    if cert.not_valid_after_utc - renew_before <= now:
        return True
    return set(sans) != set(general_names(names))


def not_after(cert_pem: bytes | str) -> datetime.datetime:
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    return x509.load_pem_x509_certificate(data).not_valid_after_utc


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# -- files -------------------------------------------------------------------------------------
def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _load_key(path: Path, passphrase: bytes | None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), passphrase or None)
    except (ValueError, TypeError) as exc:
        # TypeError: encrypted without a passphrase, or a passphrase for a plain key.
        raise TLSError(f"cannot load the key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSError(f"{path} is not an EC key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as exc:
        raise TLSError(f"{path} is not a PEM certificate: {exc}") from exc


def write_secret(path: Path, data: bytes) -> None:
    """A key file: mode 0600 from the start, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode=0o600)


def init_ca(
    folder: Path, *, passphrase: bytes | None = None, scope: Scope = DEFAULT_SCOPE
) -> x509.Certificate:
    """Create the root in `folder` (ca.key 0600, encrypted with `passphrase` when given; ca.pem),
    constrained to `scope`. Refuses to overwrite an existing key: a new root would orphan every
    certificate issued."""
    if (folder / ROOT_KEY).exists():
        raise TLSError(f"{folder / ROOT_KEY} exists; refusing to replace the root")
    key, cert = create_root(scope=scope)
    write_secret(folder / ROOT_KEY, key_pem(key, passphrase))
    write_atomic(folder / ROOT_CERT, cert_pem(cert), mode=0o644)
    return cert


def init_host(
    ca_folder: Path,
    host_id: str,
    out: Path,
    *,
    passphrase: bytes | None = None,
    days: int = HOST_DAYS,
    scope: Scope = DEFAULT_SCOPE,
) -> x509.Certificate:
    """Sign host `host_id`'s intermediate with the root in `ca_folder` and write the host's TLS
    folder `out`: host.key (0600), host.pem, ca.pem (the root, public). The intermediate takes
    the root's scope; `scope` only for a root made before name constraints."""
    root_key = _load_key(ca_folder / ROOT_KEY, passphrase)
    root = _load_cert(ca_folder / ROOT_CERT)
    key, cert = create_intermediate(root_key, root, host_id, days=days, scope=scope)
    write_secret(out / HOST_KEY, key_pem(key))
    write_atomic(out / HOST_CERT, cert_pem(cert), mode=0o644)
    write_atomic(out / ROOT_CERT, cert_pem(root), mode=0o644)
    return cert


def load_root(folder: Path) -> x509.Certificate:
    return _load_cert(folder / ROOT_CERT)


def load_issuer(folder: Path) -> Issuer:
    """A host's intermediate from its TLS folder; TLSError when a file is missing, the key does
    not belong to the certificate, or the root did not sign it."""
    key = _load_key(folder / HOST_KEY, None)
    cert = _load_cert(folder / HOST_CERT)
    root = _load_cert(folder / ROOT_CERT)
    if cert.public_key() != key.public_key():
        raise TLSError(f"{folder / HOST_KEY} does not belong to {folder / HOST_CERT}")
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise TLSError(f"{folder / HOST_CERT} is not signed by {folder / ROOT_CERT}") from exc
    return Issuer(key=key, cert=cert, root=root)


def check_scope(issuer: Issuer, domain: str) -> str:
    """A daemon's start: TLSError when its servers' names under `domain` are outside its
    intermediate's scope; a warning (else "") for a CA made before name constraints."""
    scope = scope_of(issuer.cert)
    if scope is None:
        return (
            "the host intermediate has no name constraints: it can sign for any name; "
            "make a new root with `tls init-ca` and new intermediates (docs/tls.md)"
        )
    if not scope.permits(x509.DNSName(f"server.{domain}")):
        raise TLSError(f"WARREN_VM_DOMAIN {domain} is outside this CA's names ({scope.describe()})")
    return ""


def passphrase_from_env(env: dict[str, str] | None = None) -> bytes | None:
    value = (os.environ if env is None else env).get("WARREN_CA_PASSPHRASE", "")
    return value.encode() if value else None
