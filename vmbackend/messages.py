"""Commands in, replies and events out (docs/protocol.md).

`parse` turns a raw AMQP body into one typed command or raises `Rejected` with a reason that is
safe to send back to the sender and to put in a dead-letter header (it never echoes a password).
Validation is plain code: no `assert`, no schema library.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PROTOCOL_VERSION = 1
MAX_BODY_BYTES = 64 * 1024
CREATE_VM = "create-vm"
LIST_VMS = "list-vms"
VM_COMMANDS = ("start-vm", "stop-vm", "restart-vm", "delete-vm")
HOST_COMMANDS = (LIST_VMS, *VM_COMMANDS)
COMMANDS = (CREATE_VM, *HOST_COMMANDS)

IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PASSWORD_RE = re.compile(r"^[\x21-\x7e]{12,128}$")  # printable ASCII, no spaces or controls
LIMIT_KEYS = ("max-connections", "max-queues")

MEMORY_MB = (256, 16384, 512)  # low, high, default
VCPUS = (1, 8, 1)
DISK_GB = (1, 200, 4)
LIMIT = (1, 1_000_000)


class Rejected(Exception):
    """The message cannot be served; `reason` says why (no secrets in it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CreateVM:
    vm_id: str
    image: str
    memory_mb: int
    vcpus: int
    disk_gb: int
    admin_username: str
    admin_password: str = field(repr=False)
    password_generated: bool
    limits: dict[str, int]
    command: str = CREATE_VM


@dataclass(frozen=True)
class ListVMs:
    command: str = LIST_VMS


@dataclass(frozen=True)
class VMCommand:
    """start-vm, stop-vm, restart-vm or delete-vm for one vm-id."""

    command: str
    vm_id: str
    kill: bool = False


Command = CreateVM | ListVMs | VMCommand


def _int(options: dict[str, Any], key: str, bounds: tuple[int, int, int]) -> int:
    low, high, default = bounds
    if key not in options:
        return default
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected(f"options.{key} must be an integer")
    if not low <= value <= high:
        raise Rejected(f"options.{key} must be between {low} and {high}")
    return value


def validate_vm_id(value: object) -> str:
    if not isinstance(value, str) or not VM_ID_RE.fullmatch(value):
        raise Rejected("options.vm-id must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}")
    return value


def validate_image(value: object) -> str:
    if not isinstance(value, str) or not IMAGE_RE.fullmatch(value):
        raise Rejected("image name must match [a-z0-9][a-z0-9._-]{0,63}")
    return value


def generate_admin() -> tuple[str, str]:
    """A fresh admin user name and a 32-character URL-safe password."""
    return f"warren-{secrets.token_hex(3)}", secrets.token_urlsafe(24)


def _admin(options: dict[str, Any]) -> tuple[str, str, bool]:
    if "admin" not in options:
        username, password = generate_admin()
        return username, password, True
    admin = options["admin"]
    if not isinstance(admin, dict):
        raise Rejected("options.admin must be an object with username and password")
    username, password = admin.get("username"), admin.get("password")
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise Rejected("options.admin.username must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    if username == "guest":
        raise Rejected("options.admin.username must not be guest")
    if not isinstance(password, str) or not PASSWORD_RE.fullmatch(password):
        raise Rejected("options.admin.password must be 12-128 printable ASCII characters")
    return username, password, False


def _limits(options: dict[str, Any]) -> dict[str, int]:
    limits = options.get("limits", {})
    if not isinstance(limits, dict):
        raise Rejected("options.limits must be an object")
    result: dict[str, int] = {}
    for key, value in limits.items():
        if key not in LIMIT_KEYS:
            raise Rejected(f"options.limits: unknown limit (allowed: {', '.join(LIMIT_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, int) or not LIMIT[0] <= value <= LIMIT[1]:
            raise Rejected(f"options.limits.{key} must be an integer between {LIMIT[0]} and {LIMIT[1]}")
        result[key] = value
    return result


def _create_vm(options: dict[str, Any]) -> CreateVM:
    if "image" not in options:
        raise Rejected("options.image is required")
    image = validate_image(options["image"])
    vm_id = validate_vm_id(options["vm-id"]) if "vm-id" in options else str(uuid.uuid4())
    username, password, generated = _admin(options)
    return CreateVM(
        vm_id=vm_id,
        image=image,
        memory_mb=_int(options, "memory-mb", MEMORY_MB),
        vcpus=_int(options, "vcpus", VCPUS),
        disk_gb=_int(options, "disk-gb", DISK_GB),
        admin_username=username,
        admin_password=password,
        password_generated=generated,
        limits=_limits(options),
    )


def _vm_command(command: str, options: dict[str, Any]) -> VMCommand:
    if "vm-id" not in options:
        raise Rejected("options.vm-id is required")
    kill = options.get("kill", False)
    if not isinstance(kill, bool):
        raise Rejected("options.kill must be true or false")
    return VMCommand(command=command, vm_id=validate_vm_id(options["vm-id"]), kill=kill)


def parse(body: bytes) -> Command:
    """Validate one command body; raise Rejected with a reason."""
    if len(body) > MAX_BODY_BYTES:
        raise Rejected(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Rejected("body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise Rejected("body must be a JSON object")
    version = data.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise Rejected(f"unsupported version (this host speaks {PROTOCOL_VERSION})")
    command = data.get("command")
    if not isinstance(command, str):
        raise Rejected("command must be a string")
    if command not in COMMANDS:
        raise Rejected(f"unknown command (known: {', '.join(COMMANDS)})")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise Rejected("options must be an object")
    if command == CREATE_VM:
        return _create_vm(options)
    if command == LIST_VMS:
        return ListVMs()
    return _vm_command(command, options)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")


def success(response: Any) -> bytes:
    """A reply body for a served request."""
    return _dumps({"execution-info": {"status": "success"}, "response": response})


def error(reason: str) -> bytes:
    """A reply body for a refused or failed request."""
    return _dumps({"execution-info": {"status": "error", "reason": reason}})


def command(name: str, options: dict[str, Any] | None = None) -> bytes:
    """A request body (used by the client)."""
    return _dumps({"version": PROTOCOL_VERSION, "command": name, "options": options or {}})


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def event(type_: str, *, instance_id: str | None, host_id: str, seq: int,
          **fields: Any) -> dict[str, Any]:
    """An event body (a dict: it is stored in the VM's state until the broker confirms it)."""
    body: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "message_id": str(uuid.uuid4()),
        "type": type_,
        "instance_id": instance_id,
        "host_id": host_id,
        "occurred_at": now_iso(),
        "seq": seq,
    }
    for key, value in fields.items():
        if key in body:
            raise ValueError(f"event field {key} is reserved")
        body[key] = value
    return body


def encode_event(body: dict[str, Any]) -> bytes:
    return _dumps(body)
