"""The URLs a host reports for a VM (instance.ready), checked in full: one rule for the shop's
event parser and for whatever shows a stored URL (a page must never fail on a stored one).

A host is not trusted to send a sane URL: a port of 99999 once reached the database and every
later order page answered 500. So the whole URL is checked here, not only its scheme: the
scheme from an allow-list, a host that is a DNS name or an IP address, a port of 1-65535, a
plain path, no query or fragment, and user info only where the contract has it (the AMQP URL
names the admin user, never a password).
"""

from __future__ import annotations

import ipaddress
import re

MAX_URL = 500
MANAGEMENT_SCHEMES = ("http", "https")
AMQP_SCHEMES = ("amqp", "amqps")

_URL_RE = re.compile(
    r"(?P<scheme>[a-z]+)://"
    r"(?:(?P<userinfo>[^@/?#\[\]]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>(?:/(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})*)*)"
)
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # requests.USERNAME_RE
_IPV4_LIKE = re.compile(r"[0-9.]+")


class BadURL(ValueError):
    """The URL breaks the rule; the message says which part (never the URL's user info)."""


def _check_host(host: str) -> None:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise BadURL("the host is not a valid IPv6 address") from None
        return
    if _IPV4_LIKE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise BadURL("the host is not a valid IPv4 address") from None
        return
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise BadURL("the host is not a valid DNS name")


def check_url(value: str, schemes: tuple[str, ...], *, user: bool = False) -> str:
    """`value` if it is a URL by the rule above with one of `schemes`; BadURL otherwise.
    `user`: a user name (no password) may come before the host."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL:
        raise BadURL(f"must be a non-empty string of at most {MAX_URL} characters")
    match = _URL_RE.fullmatch(value)
    if match is None:
        raise BadURL("is not a URL of the form scheme://host:port/path")
    if match["scheme"] not in schemes:
        raise BadURL(f"the scheme must be one of {', '.join(schemes)}")
    userinfo = match["userinfo"]
    if userinfo is not None and (not user or not _USER_RE.fullmatch(userinfo)):
        raise BadURL("user info is not allowed here" if not user else "bad user name")
    _check_host(match["host"])
    port = match["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        raise BadURL("the port must be between 1 and 65535")
    return value


def is_valid(value: str, schemes: tuple[str, ...], *, user: bool = False) -> bool:
    try:
        check_url(value, schemes, user=user)
    except BadURL:
        return False
    return True
