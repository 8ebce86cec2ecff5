"""Finding the QEMU processes a test (or bench script) started, by the folder they belong to."""

from __future__ import annotations

import os
from pathlib import Path


def qemu_pids(folder: Path | str) -> list[int]:
    """PIDs of live QEMU processes that belong to `folder`: its path is on their command line
    (VM sockets and disks live in a VM's folder) or their working folder is inside it (the host
    daemon starts each QEMU in its VM's folder under the state folder)."""
    base = os.path.abspath(folder)
    inside = (base + os.sep).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if b"qemu-system" not in cmdline:
            continue
        if inside in cmdline or cwd == base or cwd.startswith(base + os.sep):
            pids.append(int(entry.name))
    return pids
