"""Bridge mode: one tap device per VM on a configured bridge, a stable unique MAC per VM.

Names and MACs are derived from the vm-id, so a restarted daemon finds the same tap again and
two VMs on one host never share a MAC (collisions of the 24-bit suffix are checked against the
host's other VMs by the caller through `mac_for(..., taken=...)`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)

IP = "ip"
TIMEOUT = 10


class NetworkError(Exception):
    """A tap or bridge operation failed; the message has the command's error output."""


def tap_name(vm_id: str) -> str:
    """`wt` + 12 hex digits of the vm-id's hash: 14 characters, under IFNAMSIZ (15)."""
    return "wt" + hashlib.sha256(vm_id.encode()).hexdigest()[:12]


def mac_for(vm_id: str, taken: Iterable[str] = ()) -> str:
    """A locally administered QEMU-range MAC (52:54:00:xx:xx:xx) unique among `taken`."""
    used = {m.lower() for m in taken}
    for salt in range(1000):
        digest = hashlib.sha256(f"{vm_id}/{salt}".encode()).digest()
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
        if mac not in used:
            return mac
    raise NetworkError("no free MAC address")


def _ip(*args: str, netns: str | None = None) -> str:
    cmd = [IP, *args] if netns is None else [IP, "netns", "exec", netns, IP, *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{' '.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def link_exists(name: str, netns: str | None = None) -> bool:
    try:
        _ip("link", "show", "dev", name, netns=netns)
    except NetworkError:
        return False
    return True


def create_tap(tap: str, bridge: str, netns: str | None = None) -> None:
    """Create `tap` (idempotent), attach it to `bridge` and bring it up."""
    if not link_exists(bridge, netns):
        raise NetworkError(f"bridge {bridge} does not exist")
    if not link_exists(tap, netns):
        _ip("tuntap", "add", "dev", tap, "mode", "tap", netns=netns)
    _ip("link", "set", "dev", tap, "master", bridge, netns=netns)
    _ip("link", "set", "dev", tap, "up", netns=netns)
    log.info("tap ready tap=%s bridge=%s", tap, bridge)


def delete_tap(tap: str, netns: str | None = None) -> None:
    """Remove `tap` if it exists; never raises (cleanup path)."""
    if not link_exists(tap, netns):
        return
    try:
        _ip("link", "delete", "dev", tap, netns=netns)
    except NetworkError as exc:
        log.error("tap delete failed tap=%s error=%s", tap, exc)


def bridge_of(tap: str, netns: str | None = None) -> str | None:
    """The bridge `tap` is attached to, or None."""
    out = _ip("-o", "link", "show", "dev", tap, netns=netns)
    parts = out.split()
    if "master" in parts:
        return parts[parts.index("master") + 1]
    return None


def preferred_address(addresses: Iterable[str]) -> str | None:
    """The address customers should use: the first global IPv4, else the first IPv6."""
    parsed = []
    for text in addresses:
        try:
            parsed.append(ipaddress.ip_address(text.split("/")[0]))
        except ValueError:
            continue
    usable = [a for a in parsed if not (a.is_loopback or a.is_link_local or a.is_unspecified)]
    for addr in usable:
        if addr.version == 4:
            return str(addr)
    return str(usable[0]) if usable else None
