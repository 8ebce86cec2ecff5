"""Files the shop writes that nobody else on the machine may read: the generated keys in var/
and the SQLite database (sessions, encrypted passwords). Each is created 0600 from its first
byte (os.open with O_EXCL and the mode), never created readable and tightened after: a reader
that opened it in between would keep its descriptor. Imported by store.settings (no Django here).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def random_token() -> str:
    return secrets.token_urlsafe(50)


def private_dir(path: Path) -> Path:
    """`path` as a directory only we can enter (created 0700; an existing one is tightened,
    since a checkout's var/ from before held the same secrets)."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_DIR)
    return path


def write_new_private(path: Path, text: str) -> None:
    """Create `path` 0600 (O_EXCL: never an existing file or a planted symlink) with `text`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def local_secret(path: Path, make: Callable[[], str] = random_token) -> str:
    """A random secret kept in var/ for a machine that sets none (development, `make run`).

    Every process of one checkout (web workers, relay, event worker) must share it, so it is
    written once, atomically (hard link of a complete 0600 file), and read by everyone after.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    write_new_private(tmp, make())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race: use its secret
    finally:
        tmp.unlink()
    return path.read_text().strip()


def private_sqlite_file(name: object) -> None:
    """Create the SQLite database file empty and 0600 before SQLite does (SQLite would create it
    with the process umask, usually 0644); SQLite takes an empty file as a new database and gives
    its -wal and -shm files the database file's mode. A database from before, readable by others,
    is tightened. No-op for ":memory:", URIs or a missing folder (SQLite reports that itself)."""
    if not isinstance(name, str | Path) or str(name).startswith((":memory:", "file:")):
        return
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileNotFoundError:
        return
    except FileExistsError:
        for path in (Path(name), Path(f"{name}-wal"), Path(f"{name}-shm")):
            try:
                if path.stat().st_mode & 0o077:
                    path.chmod(PRIVATE_FILE)
            except FileNotFoundError:
                pass
