"""QMP, QEMU's control socket, through the QEMU project's own client (PyPI `qemu.qmp`).

One short connection per operation: QEMU's `-qmp unix:...,server=on` serves one client at a time,
and nothing here needs QMP events, so no connection is held between operations (the daemon, a
test and an operator can take turns). Every step has a timeout.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

DEFAULT_TIMEOUT = 10.0
SUN_PATH_MAX = 107


class QMPFailure(Exception):
    """A QMP connection or command failed (no socket, timeout, or an error reply)."""


def connect_unix(path: Path, timeout: float) -> socket.socket:
    """A connected stream socket to the Unix socket `path`, however long the path is.

    A path longer than sun_path (108 bytes) is reached through /proc/self/fd/<dirfd>/name.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    path = Path(path)
    try:
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            sock.connect(str(path))
        else:
            dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{dirfd}/{path.name}")
            finally:
                os.close(dirfd)
    except BaseException:
        sock.close()
        raise
    return sock


class _Monitor(QEMUMonitorProtocol):
    def connect_within(self, timeout: float) -> None:
        """connect() with a deadline on the greeting and capabilities negotiation."""
        self._qmp.await_greeting = True
        self._qmp.negotiate = True
        self._sync(self._qmp.connect(self._address), timeout)


@contextmanager
def session(path: Path, timeout: float = DEFAULT_TIMEOUT) -> Iterator[QEMUMonitorProtocol]:
    """A negotiated QMP connection (`qmp_capabilities` done); each command times out."""
    try:
        sock = connect_unix(path, timeout)
    except OSError as exc:
        raise QMPFailure(f"QMP socket {path.name} not reachable: {exc}") from exc
    monitor = _Monitor(sock)
    try:
        try:
            monitor.connect_within(timeout)
        except (QMPError, OSError) as exc:
            raise QMPFailure(f"QMP handshake failed: {exc!r}") from exc
        monitor.settimeout(timeout)
        yield monitor
    finally:
        try:
            monitor.close()
        except (QMPError, OSError):
            pass
        sock.close()


def command(path: Path, name: str, timeout: float = DEFAULT_TIMEOUT, **arguments: Any) -> Any:
    """Run one QMP command and return its `return` value."""
    with session(path, timeout) as monitor:
        return run(monitor, name, **arguments)


def run(monitor: QEMUMonitorProtocol, name: str, **arguments: Any) -> Any:
    """Run `name` on an open session; QMPFailure on an error reply, a timeout or a lost socket."""
    try:
        return monitor.cmd(name, **arguments)
    except (QMPError, OSError, EOFError) as exc:
        raise QMPFailure(f"QMP {name} failed: {exc!r}") from exc


def run_state(path: Path, timeout: float = DEFAULT_TIMEOUT) -> str:
    """`query-status`'s status: "running", "paused", "inmigrate", "shutdown", ..."""
    return str(command(path, "query-status", timeout)["status"])
