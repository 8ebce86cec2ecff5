"""Wake-ups on commit between the shop's processes (issue 13): the relay learns of a new outbox
row, and a waiting order page of its order's change, at once instead of at its next poll.

`notify(channel, key)` is called inside the transaction that made the change; the listeners are
woken only if it commits:

- PostgreSQL: `pg_notify(channel, key)`: the server delivers it at commit and drops it on
  rollback, to every session that ran `LISTEN channel` (a `Listener` holds its own connection,
  never Django's: `close_old_connections` would drop the LISTEN).
- SQLite (one file shared by processes on one machine, no server to carry a message): after
  the commit (`transaction.on_commit`) a datagram with the key goes to every Unix datagram
  socket in the channel's folder, one per listening process, under settings.WAKEUP_DIR
  (var/wake of the checkout: never the shared temp dir, where anyone can make a folder of the
  name we would use first) in a folder named for a hash of the database file's path. Every
  folder on the way must be ours and 0700, checked with lstat by the listener and before each
  send: a folder someone else made or opened up is not used (no wake-ups; the polls remain). Why datagram sockets and not a
  short poll: a poll of 50 ms in every waiting thread would be 20 queries a second per waiting
  page and per relay even when nothing happens; a datagram costs nothing until something
  changes, never blocks the sender (a full or dead receiver only loses a wake-up: the
  listener's own slow poll is the backstop), and a socket file whose process died is removed
  by the next sender that finds nobody behind it.

A lost wake-up is never a lost message: every listener keeps its poll (the relay every 0.5 s,
a waiting page re-reads its state every `RECHECK_SECONDS`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import select
import socket
import stat
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction

log = logging.getLogger(__name__)

OUTBOX = "warren_outbox"  # a new outbox row: the relay publishes it
ORDERS = "warren_orders"  # an order or its instance changed (key: the order's public id)
CHANNELS = (OUTBOX, ORDERS)
MAX_KEY = 100
_counter = itertools.count()


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


class UnsafeWakeFolder(OSError):
    """A folder on the way to the sockets is not ours alone: it is not used."""


def _wake_dir(channel: str) -> Path:
    """The channel's socket folder for this SQLite database (short: Unix socket paths are
    limited to 107 bytes)."""
    name = str(connection.settings_dict.get("NAME") or "")
    tag = hashlib.sha256(name.encode()).hexdigest()[:16]
    return Path(settings.WAKEUP_DIR) / tag / channel


def _check_private(folder: Path, *, create: bool) -> None:
    """Every folder from WAKEUP_DIR down to `folder` is a real directory (not a symlink), ours,
    and closed to others; `create` makes the missing ones 0700 first. Race: another user may
    have made one before us, so an existing folder is checked, never trusted or chmodded."""
    root = Path(settings.WAKEUP_DIR)
    if create:
        root.parent.mkdir(parents=True, exist_ok=True)
    for path in (root, folder.parent, folder):
        if create:
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise UnsafeWakeFolder(f"{path} is not a folder only this user can use")


def notify(channel: str, key: str = "") -> None:
    """Wake `channel`'s listeners once the current transaction commits (at once outside one)."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown wake-up channel {channel!r}")
    key = key[:MAX_KEY]
    if is_postgresql():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [channel, key])
        return
    folder = _wake_dir(channel)
    transaction.on_commit(lambda: _send_datagrams(folder, key.encode()))


def _send_datagrams(folder: Path, payload: bytes) -> None:
    try:
        _check_private(folder, create=False)
        names = list(folder.iterdir())
    except UnsafeWakeFolder as exc:
        log.error("event=wakeup_folder_unsafe error=%s", exc)
        return
    except OSError:
        return  # nobody listens yet
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in names:
            try:
                sock.sendto(payload, str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    path.unlink()  # its process is gone
            except OSError as exc:  # a full queue (EAGAIN) loses one wake-up: the poll covers it
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                    log.warning("event=wakeup_send_failed path=%s error=%s", path, exc)


class Listener:
    """One process's subscription to a channel: a file descriptor to wait on, and the keys
    that arrived. Close it when done."""

    def __init__(self, channel: str):
        if channel not in CHANNELS:
            raise ValueError(f"unknown wake-up channel {channel!r}")
        self.channel = channel
        self._pg: Any = None
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        if is_postgresql():
            self._listen_postgresql()
        else:
            self._listen_socket()

    def _listen_postgresql(self) -> None:
        import psycopg  # only on PostgreSQL

        settings = connection.settings_dict
        params = {
            "dbname": settings["NAME"],
            "user": settings.get("USER") or None,
            "password": settings.get("PASSWORD") or None,
            "host": settings.get("HOST") or None,
            "port": settings.get("PORT") or None,
        }
        self._pg = psycopg.connect(
            autocommit=True, **{k: v for k, v in params.items() if v is not None}
        )
        self._pg.execute(f"LISTEN {self.channel}")  # a constant from CHANNELS, never input

    def _listen_socket(self) -> None:
        folder = _wake_dir(self.channel)
        _check_private(folder, create=True)
        self._path = folder / f"{os.getpid()}-{next(_counter)}"
        self._path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self._path))
        sock.setblocking(False)
        self._sock = sock

    def fileno(self) -> int:
        if self._sock is not None:
            return self._sock.fileno()
        return int(self._pg.pgconn.socket)

    def drain(self) -> list[str]:
        """The keys that arrived since the last call (never blocks)."""
        keys: list[str] = []
        if self._sock is not None:
            while True:
                try:
                    keys.append(self._sock.recv(MAX_KEY * 4).decode("utf-8", "replace"))
                except (BlockingIOError, InterruptedError):
                    return keys
        for note in self._pg.notifies(timeout=0):
            keys.append(note.payload)
        return keys

    def wait(self, timeout: float) -> list[str]:
        """Block until a wake-up arrives or `timeout` seconds pass; the keys that arrived."""
        keys = self.drain()
        if keys:
            return keys
        readable, _, _ = select.select([self], [], [], max(0.0, timeout))
        return self.drain() if readable else []

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
            self._pg = None

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Hub:
    """Per-process fan-out for the order pages: one Listener thread on ORDERS, and any number
    of request threads waiting for their order's key to change (a counter per key)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generations: dict[str, int] = {}
        self.thread: threading.Thread | None = None
        self.failed = False
        self.stopping = threading.Event()

    def stop(self) -> None:
        """End the listener thread within a second (tests; the process's hub runs forever)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.thread = None
        self.stopping = threading.Event()  # a later waiter starts a new listener

    def generation(self, key: str) -> int:
        self._ensure_started()
        with self.cond:
            return self.generations.get(key, 0)

    def wait(self, key: str, seen: int, timeout: float) -> int:
        """Wait until `key`'s generation passes `seen` or `timeout`; the current generation."""
        with self.cond:
            self.cond.wait_for(lambda: self.generations.get(key, 0) != seen, timeout)
            return self.generations.get(key, 0)

    def _ensure_started(self) -> None:
        with self.cond:
            if self.thread is not None and self.thread.is_alive():
                return
            self.thread = threading.Thread(target=self._run, name="wakeup-hub", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        stopping = self.stopping
        try:
            listener = Listener(ORDERS)
        except Exception as exc:  # noqa: BLE001 - the pages fall back to re-reading
            log.warning("event=wakeup_hub_unavailable error=%s", exc)
            self.failed = True
            return
        finally:
            connection.close()  # this thread's Django connection (used for settings only)
        with listener:
            while not stopping.is_set():
                try:
                    keys = listener.wait(1.0)
                except Exception as exc:  # noqa: BLE001 - e.g. PostgreSQL restarted
                    log.warning("event=wakeup_hub_lost error=%s", exc)
                    return  # the next waiting page starts a new one
                if keys:
                    with self.cond:
                        for key in keys:
                            self.generations[key] = self.generations.get(key, 0) + 1
                        if len(self.generations) > 10_000:
                            self.generations.clear()  # waiters see a change and re-read
                        self.cond.notify_all()


hub = Hub()
