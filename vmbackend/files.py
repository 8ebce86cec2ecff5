"""Crash-safe file writes, shared by the daemon's state files and the image files.

A write is temp file in the same folder + fsync + rename + fsync of the folder, so after a crash
(or SIGKILL) the file holds the old or the new content, never half of one, and the rename itself
is on disk. The mode is set on the temp file before any byte is written: a secret is never
readable by others, not even for a moment.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` (creating its folder); a crash leaves the old or the new content."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o644) -> None:
    """`data` as indented, key-sorted JSON (newline-terminated) through `write_atomic`."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(Path(path), text.encode("utf-8"), mode=mode)
