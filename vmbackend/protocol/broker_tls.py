"""amqps:// to the control broker with the server's certificate verified (docs/security.md).

One rule for the shop, the hosts and the operators' client: an amqps URL is verified against
WARREN_BROKER_CA (a PEM file; empty: the system's CAs), host name included. create-vm carries the
VM's admin password, so production brokers are reached this way.
"""

from __future__ import annotations

import ssl

import pika


def with_tls(params: pika.URLParameters, ca_file: str | None) -> pika.URLParameters:
    """`params` of an amqps URL verifying the broker against `ca_file`; amqp:// unchanged."""
    if params.ssl_options is None:
        return params
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    return params
