"""Who may do what on the control broker: one user per host, one for the shop, operators.

A host's user may use only its own queue, consume the shared create-vm queue and publish events,
dead letters and replies; it cannot read another host's queue or the shop's event queue, nor
configure (so nor delete) anything shared (docs/security.md). The permissions are RabbitMQ's
three regular expressions per vhost (configure, write, read), matched against exchange and queue
names; `amq.default` is the default exchange (replies to reply_to go through it).

Users are created with `rabbitmqctl` on the broker's machine (the management plugin is not
required); the password goes to it on stdin, never on a command line.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from dataclasses import dataclass

from vmbackend.protocol import topology

HOST_USER_PREFIX = "warren-host-"
SHOP_USER = "warren-shop"
RABBITMQCTL = "rabbitmqctl"
PASSWORD_BYTES = 24


def host_user(host_id: str) -> str:
    """The broker user host `host_id` connects as (and publishes its events as)."""
    return f"{HOST_USER_PREFIX}{host_id}"


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str


def _names(*names: str) -> str:
    return "^(" + "|".join(re.escape(name) for name in names) + ")$"


def host_permissions(host_id: str) -> Permissions:
    """A host's rights. Its own queue under the current and the legacy name (migrate_legacy
    moves one into the other through the helper exchange)."""
    own = topology.host_queue(host_id)
    legacy = own.removesuffix(topology.LEGACY_SUFFIX)
    return Permissions(
        configure=_names(own, legacy, topology.MIGRATE_EXCHANGE),
        write=_names(
            own,
            legacy,
            topology.EVENTS_EXCHANGE,
            topology.DLX,
            topology.MIGRATE_EXCHANGE,
            "amq.default",
        ),
        read=_names(
            own,
            legacy,
            topology.COMMANDS_EXCHANGE,
            topology.CREATE_QUEUE,
            topology.MIGRATE_EXCHANGE,
        ),
    )


# The shop declares everything shared and consumes the events and the dead letters.
_WARREN_NAMES = r"^(computing|warren)(\..*)?$"
SHOP_PERMISSIONS = Permissions(
    configure=_WARREN_NAMES, write=_WARREN_NAMES + r"|^amq\.default$", read=_WARREN_NAMES
)
# An operator's scripts (vmbackend.client) send commands and read their replies (direct
# reply-to needs no permission); they are accepted by a daemon only when the operator's user is
# in its WARREN_COMMAND_SENDERS.
OPERATOR_PERMISSIONS = Permissions(
    configure="^$", write=_names(topology.COMMANDS_EXCHANGE), read="^$"
)


class BrokerAdminError(Exception):
    """rabbitmqctl failed (its message, which never contains the password)."""


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def _ctl(*args: str, stdin: str | None = None, node: str | None = None) -> str:
    argv = [RABBITMQCTL, *(("-n", node) if node else ()), *args]
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerAdminError(f"{args[0]}: {exc}") from None
    if done.returncode != 0:
        raise BrokerAdminError(f"{args[0]}: {(done.stderr or done.stdout).strip()[:500]}")
    return done.stdout


def user_exists(name: str, *, node: str | None = None) -> bool:
    out = _ctl("list_users", "--quiet", "--no-table-headers", node=node)
    return any(line.split("\t")[0] == name for line in out.splitlines())


def set_user(
    name: str, password: str, permissions: Permissions, *, vhost: str, node: str | None = None
) -> None:
    """Create the user (or change its password), no tags (so no `impersonator`: it cannot
    publish under another user_id), and give it exactly `permissions` on `vhost`."""
    if user_exists(name, node=node):
        _ctl("change_password", name, stdin=password, node=node)
    else:
        _ctl("add_user", name, stdin=password, node=node)
    _ctl("set_user_tags", name, node=node)
    _ctl(
        "set_permissions",
        "-p",
        vhost,
        name,
        permissions.configure,
        permissions.write,
        permissions.read,
        node=node,
    )


def delete_user(name: str, *, node: str | None = None) -> None:
    if user_exists(name, node=node):
        _ctl("delete_user", name, node=node)


def add_host(host_id: str, *, vhost: str, node: str | None = None) -> str:
    """Create (or re-key) host `host_id`'s user; returns its new password."""
    password = new_password()
    set_user(host_user(host_id), password, host_permissions(host_id), vhost=vhost, node=node)
    return password


def add_shop(*, vhost: str, name: str = SHOP_USER, node: str | None = None) -> str:
    password = new_password()
    set_user(name, password, SHOP_PERMISSIONS, vhost=vhost, node=node)
    return password


def add_operator(name: str, *, vhost: str, node: str | None = None) -> str:
    password = new_password()
    set_user(name, password, OPERATOR_PERMISSIONS, vhost=vhost, node=node)
    return password
