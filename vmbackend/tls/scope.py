"""What Warren's CA may sign for: one DNS domain (the servers' names) and the networks servers are
reached on, written into the root and every host intermediate as critical name constraints.

Customers install Warren's root; without constraints a stolen host key could sign for any name
(`www.google.com`) and every client trusting the root would believe it. With them, OpenSSL (and
every other verifier) refuses a chain whose leaf names anything outside the scope, whoever signed
it. `permits` is the same rule in code, so the issuer refuses such a name before signing.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

DEFAULT_DOMAIN = "warren.localhost"  # `make run`: *.localhost is loopback where it resolves
DEFAULT_NETWORKS = ("127.0.0.0/8", "::1/128")  # `make run`: servers are reached on loopback
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ScopeError(ValueError):
    """A domain or network setting that cannot be a name constraint."""


def validate_domain(value: str) -> str:
    """A lower-case DNS name of at least two labels (a single label would be a whole TLD)."""
    domain = value.strip().rstrip(".").lower()
    labels = domain.split(".")
    if len(domain) > 200 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        raise ScopeError(f"WARREN_VM_DOMAIN must be a DNS name like servers.example.com: {value!r}")
    return domain


def parse_networks(value: str) -> tuple[Network, ...]:
    """A comma-separated list of CIDR networks (a bare address is its own /32 or /128)."""
    out: list[Network] = []
    for part in value.split(","):
        if not part.strip():
            continue
        try:
            out.append(ipaddress.ip_network(part.strip(), strict=True))
        except ValueError as exc:
            raise ScopeError(f"WARREN_VM_NETWORKS: {part.strip()!r} is not a network") from exc
    if not out:
        raise ScopeError("WARREN_VM_NETWORKS needs at least one network")
    return tuple(out)


@dataclass(frozen=True)
class Scope:
    domain: str
    networks: tuple[Network, ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Scope:
        env = os.environ if env is None else env
        return cls(
            domain=validate_domain(env.get("WARREN_VM_DOMAIN") or DEFAULT_DOMAIN),
            networks=parse_networks(env.get("WARREN_VM_NETWORKS") or ",".join(DEFAULT_NETWORKS)),
        )

    def constraints(self) -> x509.NameConstraints:
        # An iPAddress subtree is always present: without one, IP names would be unconstrained.
        permitted: list[x509.GeneralName] = [x509.DNSName(self.domain)]
        permitted += [x509.IPAddress(net) for net in self.networks]
        return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)

    def permits(self, name: x509.GeneralName) -> bool:
        """RFC 5280's rule for a DNS or IP subject alternative name; any other type is refused."""
        if isinstance(name, x509.DNSName):
            value = name.value.lower()
            return value == self.domain or value.endswith("." + self.domain)
        if isinstance(name, x509.IPAddress):
            address = name.value
            return isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address) and any(
                address in net for net in self.networks
            )
        return False

    def describe(self) -> str:
        return f"{self.domain} and {', '.join(str(n) for n in self.networks)}"


def scope_of(cert: x509.Certificate) -> Scope | None:
    """The scope a CA certificate was made with; None when it has no name constraints (a CA made
    before they existed: docs/tls.md says how to replace it)."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    domains = [n.value for n in nc.permitted_subtrees or [] if isinstance(n, x509.DNSName)]
    networks = tuple(
        n.value
        for n in nc.permitted_subtrees or []
        if isinstance(n, x509.IPAddress)
        and isinstance(n.value, ipaddress.IPv4Network | ipaddress.IPv6Network)
    )
    if len(domains) != 1:
        return None
    return Scope(domain=domains[0], networks=networks)
