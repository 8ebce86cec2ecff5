"""The QEMU guest agent (qemu-ga) on its virtio-serial port, as JSON lines on a Unix socket.

QEMU serves the port's socket to one client at a time and knows nothing of the protocol: a
connection may see a reply meant for an earlier client, or the agent may not be running yet
(the socket accepts, nobody answers). So one connection is kept, and every (re)connection starts
with `guest-sync-delimited` and a random id: the agent answers with a 0xFF byte then
`{"return": id}`; everything before that is stale and dropped. A 0xFF byte sent first resets the
agent's JSON parser after a half-written request. Every call has a timeout; after any failure the
connection is dropped and the next call resynchronises.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import random
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbackend.machine.qmp import connect_unix

SYNC_BYTE = b"\xff"
# Bytes of one reply at most (guest-exec's output, base64: qemu-ga caps it at 16 MiB raw): a
# guest is not trusted, and an endless reply must end in an error, not in the host's memory.
MAX_LINE = 24 * 1024 * 1024
MAX_EXEC_OUTPUT = 4 * 1024 * 1024  # bytes per stream of a guest-exec; our commands print lines
MAX_PID = 2**31 - 1


class GuestAgentError(Exception):
    """The guest agent did not answer in time, or answered with an error."""


class GuestReplyError(GuestAgentError):
    """The agent answered, but not in the shape its command returns: a broken or hostile guest.
    Callers that handle GuestAgentError handle this too (the guest is not trusted)."""


class GuestAgent:
    """One connection to one VM's guest agent socket."""

    def __init__(self, path: Path, *, max_reply: int = MAX_LINE) -> None:
        self.path = Path(path)
        self.max_reply = max_reply
        self._sock: socket.socket | None = None
        self._buf = b""

    # -- connection -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buf = b""

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("not connected")
        return self._sock

    def _send(self, data: bytes, deadline: float) -> None:
        sock = self._connected()
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        sock.sendall(data)

    def _read_until(self, marker: bytes, deadline: float) -> bytes:
        """Bytes up to and including `marker` (kept out of the buffer). GuestAgentError (the
        connection dropped) when more than `max_reply` bytes come without it."""
        sock = self._connected()
        buf = bytearray(self._buf)
        searched = 0  # only new bytes are searched: a long reply costs linear time
        while (found := buf.find(marker, searched)) < 0:
            searched = max(0, len(buf) - len(marker) + 1)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._buf = bytes(buf)
                raise TimeoutError("no answer")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except OSError:
                self._buf = bytes(buf)
                raise
            if not chunk:
                raise ConnectionError("guest agent socket closed")
            buf += chunk
            if len(buf) > self.max_reply:
                self.close()
                raise GuestAgentError(
                    f"guest agent sent a reply longer than {self.max_reply} bytes"
                )
        end = found + len(marker)
        self._buf = bytes(buf[end:])
        return bytes(buf[:end])

    def _read_json(self, deadline: float) -> dict[str, Any]:
        while True:
            line = self._read_until(b"\n", deadline).strip().lstrip(SYNC_BYTE)
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # garbage from an earlier client or a half line after a reset
            if isinstance(msg, dict):
                return msg

    def sync(self, timeout: float = 3.0) -> None:
        """(Re)connect and synchronise with `guest-sync-delimited`."""
        deadline = time.monotonic() + timeout
        self.close()
        try:
            self._sock = connect_unix(self.path, timeout)
            sync_id = random.randint(1, 2**31 - 1)
            request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
            self._send(SYNC_BYTE + json.dumps(request).encode() + b"\n", deadline)
            while True:
                self._read_until(SYNC_BYTE, deadline)  # drop everything before the delimiter
                if self._read_json(deadline).get("return") == sync_id:
                    return
        except (OSError, GuestAgentError) as exc:
            self.close()
            raise GuestAgentError(
                f"guest agent not answering: {exc or type(exc).__name__}"
            ) from exc

    def execute(
        self, name: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        """Run one command and return its `return` value (syncs first when not connected)."""
        deadline = time.monotonic() + timeout
        if self._sock is None:
            self.sync(timeout)
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        try:
            self._send(json.dumps(request).encode() + b"\n", deadline)
            reply = self._read_json(deadline)
        except OSError as exc:
            self.close()
            raise GuestAgentError(f"guest agent {name}: {exc or type(exc).__name__}") from exc
        if "error" in reply:
            err = reply["error"]
            desc = err.get("desc") if isinstance(err, dict) else err
            raise GuestAgentError(f"guest agent {name}: {desc}")
        if "return" not in reply:
            self.close()
            raise GuestAgentError(f"guest agent {name}: unexpected reply")
        return reply["return"]

    # -- commands -------------------------------------------------------------------------------
    def ping(self, timeout: float = 3.0) -> None:
        self.execute("guest-ping", timeout=timeout)

    def wait(self, deadline: float, attempt: float = 3.0) -> None:
        """Retry sync + ping until the agent answers or `deadline` (time.monotonic()) passes."""
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.sync(min(attempt, max(0.1, deadline - time.monotonic())))
                self.ping(min(attempt, max(0.1, deadline - time.monotonic())))
                return
            except GuestAgentError as exc:
                last = exc
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        raise GuestAgentError(f"guest agent did not answer: {last}")

    def interfaces(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        result = self.execute("guest-network-get-interfaces", timeout=timeout)
        return result if isinstance(result, list) else []

    def addresses(self, timeout: float = 10.0) -> list[str]:
        return routable_addresses(self.interfaces(timeout))

    def set_time(self, timeout: float = 10.0) -> None:
        """`guest-set-time` without a time: the guest re-reads its (host-driven) hardware clock."""
        self.execute("guest-set-time", timeout=timeout)

    def exec(
        self,
        path: str,
        args: Iterable[str] = (),
        *,
        input_data: bytes | None = None,
        timeout: float = 30.0,
    ) -> ExecResult:
        """Run a program in the guest, wait for it, and return its exit code and output."""
        deadline = time.monotonic() + timeout
        pid = self.exec_start(path, args, input_data=input_data, timeout=timeout)
        return self.exec_wait(pid, path, deadline)

    def exec_start(
        self,
        path: str,
        args: Iterable[str] = (),
        *,
        input_data: bytes | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Start a program in the guest and return its pid at once (the agent runs it
        asynchronously), so the caller can do other work meanwhile."""
        arguments: dict[str, Any] = {"path": path, "arg": list(args), "capture-output": True}
        if input_data is not None:
            arguments["input-data"] = base64.b64encode(input_data).decode()
        return parse_exec_pid(self.execute("guest-exec", arguments, timeout=timeout))

    def exec_wait(self, pid: int, path: str, deadline: float) -> ExecResult:
        """Wait (until `deadline`, a time.monotonic() value) for a program from exec_start."""
        while True:
            status = self.execute(
                "guest-exec-status", {"pid": pid}, timeout=max(0.5, deadline - time.monotonic())
            )
            result = parse_exec_status(status)
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise GuestAgentError(f"guest-exec {path}: still running past its deadline")
            time.sleep(0.05)


@dataclass(frozen=True)
class ExecResult:
    exitcode: int
    stdout: bytes
    stderr: bytes


def parse_exec_pid(reply: object) -> int:
    """guest-exec's `{"pid": n}`."""
    pid = reply.get("pid") if isinstance(reply, dict) else None
    if type(pid) is not int or not 0 <= pid <= MAX_PID:
        raise GuestReplyError(f"guest-exec: no process id in the reply: {_shown(reply)}")
    return pid


def parse_exec_status(reply: object) -> ExecResult | None:
    """guest-exec-status's reply: None while the program runs, its result once it exited.
    A process killed by a signal has no exit code: -1."""
    if not isinstance(reply, dict) or not isinstance(reply.get("exited"), bool):
        raise GuestReplyError(f"guest-exec-status: not a status: {_shown(reply)}")
    if not reply["exited"]:
        return None
    code = reply.get("exitcode", -1)
    if type(code) is not int or not -MAX_PID - 1 <= code <= MAX_PID:
        raise GuestReplyError(f"guest-exec-status: exit code is not a number: {_shown(code)}")
    return ExecResult(
        exitcode=code,
        stdout=_output(reply.get("out-data", "")),
        stderr=_output(reply.get("err-data", "")),
    )


def _output(data: object) -> bytes:
    # base64 is 4 characters per 3 bytes: refuse before decoding what is too big anyway.
    if not isinstance(data, str) or len(data) > (MAX_EXEC_OUTPUT + 2) // 3 * 4:
        raise GuestReplyError("guest-exec-status: output is not text or is too long")
    try:
        out = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GuestReplyError("guest-exec-status: output is not base64") from exc
    if len(out) > MAX_EXEC_OUTPUT:
        raise GuestReplyError("guest-exec-status: output is too long")
    return out


def _shown(value: object) -> str:
    """A bounded picture of a guest's reply for an error message."""
    return repr(value)[:200]


def routable_addresses(interfaces: object) -> list[str]:
    """The guest's addresses from `guest-network-get-interfaces`, for reaching it from outside.

    Drops loopback, link-local, unspecified and multicast addresses and anything malformed;
    IPv4 first, then IPv6, each in the agent's order, without duplicates.
    """
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if not isinstance(interfaces, list):
        return []
    for iface in interfaces:
        if not isinstance(iface, dict):
            continue
        for entry in iface.get("ip-addresses") or []:
            if not isinstance(entry, dict):
                continue
            try:
                addr = ipaddress.ip_address(str(entry.get("ip-address", "")).split("%")[0])
            except ValueError:
                continue
            if addr.is_loopback or addr.is_link_local or addr.is_unspecified or addr.is_multicast:
                continue
            if addr not in found:
                found.append(addr)
    return [str(a) for a in sorted(found, key=lambda a: a.version)]
