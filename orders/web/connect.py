"""How a customer connects to a TLS server: its own name to verify, the address to reach it on,
and the curl and pika lines that do both (docs/tls.md, "Each server's own name").

The server's certificate names only `<short-id>.<WARREN_VM_DOMAIN>`, not the host's address
(every VM of a host shares that). The host reports URLs with its address; where the name does not
resolve, a client connects to the address and verifies the name (SNI / server_hostname). Names
under `.localhost` on a loopback server (the one-box system) resolve in browsers and curl
(RFC 6761), so the management link uses the name there.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from django.conf import settings

from orders.models import Instance
from vmbackend.protocol.server_names import server_name


def _split(url: str) -> tuple[SplitResult, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # stored data never breaks the page
        return None
    if not parts.hostname or port is None:
        return None
    return parts, port


def _resolves_to(name: str, address: str) -> bool:
    """A name the customer's browser and curl resolve to this address by themselves."""
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
    return loopback and name.endswith(".localhost")


def tls_connection(instance: Instance) -> dict[str, Any]:
    """The page's TLS facts for a serving instance; {} for a server without TLS."""
    amqp = _split(instance.amqp_url)
    management = _split(instance.management_url)
    if amqp is None or amqp[0].scheme != "amqps":
        return {}
    name = server_name(instance.vm_id, settings.VM_DOMAIN)
    address, amqps_port = amqp[0].hostname or "", amqp[1]
    ctx: dict[str, Any] = {
        "tls_name": name,
        "tls_address": address,
        "pika_example": (
            "import ssl, pika\n"
            'context = ssl.create_default_context(cafile="warren-ca.pem")\n'
            f'params = pika.URLParameters("amqps://{instance.admin_username}:PASSWORD@'
            f'{_host(address)}:{amqps_port}/")\n'
            f'params.ssl_options = pika.SSLOptions(context, server_hostname="{name}")\n'
            "connection = pika.BlockingConnection(params)"
        ),
    }
    if management is not None and management[0].scheme == "https":
        https_port = management[1]
        ctx["curl_example"] = (
            f"curl --cacert warren-ca.pem --connect-to {name}:{https_port}:"
            f"{_host(management[0].hostname or '')}:{https_port} "
            f"-u {instance.admin_username} https://{name}:{https_port}/api/overview"
        )
        if _resolves_to(name, management[0].hostname or ""):
            ctx["named_management_url"] = urlunsplit(
                management[0]._replace(netloc=f"{name}:{https_port}")
            )
    return ctx


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
