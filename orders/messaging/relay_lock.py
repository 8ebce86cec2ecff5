"""One outbox relay at a time (orders/messaging/outbox.py), on PostgreSQL and on SQLite.

Two relays would publish the same rows twice (each reads the unsent rows, publishes, marks them),
and every duplicate create-vm may become a second VM (docs/orders.md, Duplicates). A lock that
dies with its holder lets a second relay wait and take over when the first one dies, however it
dies (SIGKILL included):

- PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a connection of the lock's own,
  not Django's (Django closes and reopens its connections between polls, which would release
  it). The server releases it when that session ends, i.e. when the process dies.
- SQLite: `fcntl.flock` on a file next to the database file; the kernel releases it when the
  process dies. An in-memory database (tests) is private to its process: nothing to lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from typing import Any, Protocol, cast

from django.db import connections

log = logging.getLogger(__name__)

# pg_try_advisory_lock's key: any constant the shop uses for nothing else ("warren relay").
ADVISORY_KEY = 0x77617272656E_72
LOCK_SUFFIX = ".relay-lock"


class RelayLock(Protocol):
    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this process holds it."""

    def still_held(self) -> bool:
        """False once the lock may have been lost (its database session went away)."""

    def release(self) -> None: ...


class NoLock:
    """An in-memory database: no other process can see it, so none can relay it."""

    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        pass


class FileLock:
    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def still_held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases the flock
            self.fd = None


class AdvisoryLock:
    def __init__(self, alias: str = "default"):
        self.db = connections[alias]
        self.conn: Any = None
        # The driver's own base error: this lock talks to a raw driver connection, not through
        # Django's wrappers (which would turn it into django.db.Error).
        self.driver_error: type[Exception] = cast(Any, self.db).Database.Error

    def try_acquire(self) -> bool:
        try:
            if self.conn is None:
                self.conn = self.db.get_new_connection(self.db.get_connection_params())
                self.conn.autocommit = True
            with self.conn.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_KEY])
                return bool(cursor.fetchone()[0])
        except self.driver_error as exc:  # the database is down: wait and try again
            log.warning("event=relay_lock_unavailable error=%s", type(exc).__name__)
            self.release()
            return False

    def still_held(self) -> bool:
        """The session that holds the lock is still there (a server restart ends it)."""
        if self.conn is None:
            return False
        try:
            with self.conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except self.driver_error:
            self.release()
            return False
        return True

    def release(self) -> None:
        if self.conn is not None:
            try:
                # Unlock first: the server ends a closed session (and frees its locks) a moment
                # after the client has gone, and the next relay should not wait for that.
                with self.conn.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock_all()")
                self.conn.close()
            except self.driver_error:
                pass  # the session is gone already, and its lock with it
            self.conn = None


def relay_lock(alias: str = "default") -> RelayLock:
    """The lock that fits the database in use."""
    db = connections[alias]
    if db.vendor == "postgresql":
        return AdvisoryLock(alias)
    if db.vendor == "sqlite":
        if cast(Any, db).is_in_memory_db():
            return NoLock()
        return FileLock(str(db.settings_dict["NAME"]) + LOCK_SUFFIX)
    return NoLock()
