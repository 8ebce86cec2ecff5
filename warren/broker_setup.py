"""`warren run`'s broker users: the shop and its one host each log in as a user of their own.

Every start gives both users fresh passwords (rabbitmqctl on this machine, docs/deploy.md) and
hands each service its own URL in its environment only: nothing is written to disk or logged.
WARREN_BROKER_SHARED_USER set (e.g. to guest) is the explicit shared development mode instead:
every service then uses WARREN_AMQP_URL as it is, and the host obeys that user's commands.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import pika

from vmbackend.protocol import broker_users

SHOP_SERVICES = ("web", "relay", "events", "mail")
HOST_SERVICE = "vmbackend"


def with_user(url: str, user: str, password: str) -> str:
    """`url` logging in as `user` instead (scheme, host, port, vhost and query kept)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{netloc}"))


def service_environments(
    env: dict[str, str], host_id: str, *, shop_user: str = broker_users.SHOP_USER
) -> dict[str, dict[str, str]]:
    """Per service, what to add to its environment. Raises BrokerAdminError when rabbitmqctl
    cannot set the users up (then: WARREN_BROKER_SHARED_USER, or the users made by hand).
    `shop_user`: another name for the shop's user (tests run several shops on one broker)."""
    url = env.get("WARREN_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/%2F"
    shared = env.get("WARREN_BROKER_SHARED_USER", "")
    if shared:
        return {HOST_SERVICE: {"WARREN_COMMAND_SENDERS": shared}}
    vhost = pika.URLParameters(url).virtual_host
    shop_url = with_user(url, shop_user, broker_users.add_shop(vhost=vhost, name=shop_user))
    services: dict[str, dict[str, str]] = {
        name: {"WARREN_AMQP_URL": shop_url} for name in SHOP_SERVICES
    }
    services[HOST_SERVICE] = host_environment(url, host_id, shop_user=shop_user)
    return services


def host_environment(
    url: str, host_id: str, *, shop_user: str = broker_users.SHOP_USER
) -> dict[str, str]:
    """A host daemon's broker user (made or re-keyed now) and the sender it obeys."""
    vhost = pika.URLParameters(url).virtual_host
    password = broker_users.add_host(host_id, vhost=vhost)
    return {
        "WARREN_AMQP_URL": with_user(url, broker_users.host_user(host_id), password),
        "WARREN_COMMAND_SENDERS": shop_user,
    }
