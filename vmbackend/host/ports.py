"""Host ports for user-mode port forwards (management and AMQP per VM).

A port is handed out only when no VM of this host holds it (the state files are the record) and
nothing else is bound to it on the bind address right now. Releasing is forgetting: the VM's
state file no longer lists the port.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable


class NoFreePorts(Exception):
    """The configured port range has no free ports left."""


def is_free(bind_address: str, port: int) -> bool:
    """True when a TCP listener could bind `bind_address:port` right now.

    SO_REUSEADDR as QEMU's port forwards use it: connections of a deleted VM lingering in
    TIME_WAIT do not block the port, a live listener does.
    """
    family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_address, port))
        except OSError:
            return False
    return True


def allocate(
    count: int,
    *,
    used: Iterable[int],
    bind_address: str,
    port_min: int,
    port_max: int,
    rng: random.Random | None = None,
) -> list[int]:
    """`count` distinct ports in [port_min, port_max], none in `used`, each bindable now.

    The scan starts at a random offset so two daemons sharing a range rarely race for the same
    port; the bind check catches the rest.
    """
    taken = set(used)
    span = port_max - port_min + 1
    start = (rng or random).randrange(span)
    chosen: list[int] = []
    for i in range(span):
        port = port_min + (start + i) % span
        if port in taken or not is_free(bind_address, port):
            continue
        chosen.append(port)
        taken.add(port)
        if len(chosen) == count:
            return chosen
    raise NoFreePorts(f"no {count} free ports in {port_min}-{port_max} on {bind_address}")
