"""The commands the shop (and the CLI) send to hosts: their typed form, `parse` for the daemon,
and the builders (`create_vm_body`, the console's `set_admin_password_body` ...) for senders.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from vmbackend.protocol.wire import PROTOCOL_VERSION, Rejected, encode, load_body

CREATE_VM = "create-vm"


LIST_VMS = "list-vms"


VM_COMMANDS = ("start-vm", "stop-vm", "restart-vm", "delete-vm")


HOST_COMMANDS = (LIST_VMS, *VM_COMMANDS)  # also broadcast keys (bound on every host queue)


# The customer's console (issue 11): sent to one host only (routing key host.<host_id>).
SET_ADMIN_PASSWORD = "set-admin-password"  # noqa: S105 - a command name, not a password


RESIZE_VM = "resize-vm"


RESTART_VM = "restart-vm"


CONSOLE_COMMANDS = (SET_ADMIN_PASSWORD, RESIZE_VM)


COMMANDS = (CREATE_VM, *HOST_COMMANDS, *CONSOLE_COMMANDS)


IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


VM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# The one password rule, for the shop (what it generates) and the host (what it accepts): the
# characters the guest takes (vmbackend/images/guest/warren-firstboot's PASSWORD_RE writes it
# into rabbitmq.conf, where `#` starts a comment and `$`, `&`, `;`, quotes break the line), so
# no password the protocol accepts is refused inside the VM. Never `#$&;'"\`<>(){}[]|` or space.
PASSWORD_CHARS = r"A-Za-z0-9._~+=@%:,!?/*^-"  # noqa: S105 - a character class
PASSWORD_RE = re.compile(rf"^[{PASSWORD_CHARS}]{{12,128}}$")
PASSWORD_RULE = "12-128 characters of A-Z a-z 0-9 . _ ~ + = @ % : , ! ? / * ^ -"  # noqa: S105


LIMIT_KEYS = ("max-connections", "max-queues")


MEMORY_MB = (256, 16384, 512)  # low, high, default


VCPUS = (1, 8, 1)


DISK_GB = (1, 200, 4)


LIMIT = (1, 1_000_000)


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
    plain_ports: bool = True  # False: TLS ports only, where the host has TLS (docs/tls.md)


@dataclass(frozen=True)
class ListVMs:
    command: str = LIST_VMS


@dataclass(frozen=True)
class VMCommand:
    """start-vm, stop-vm, restart-vm or delete-vm for one vm-id."""

    command: str
    vm_id: str
    kill: bool = False
    request_id: str = ""  # restart-vm only: the console's idempotency key (a UUID, or "")


@dataclass(frozen=True)
class SetAdminPassword:
    """Give the VM's administrator a new password (the console's rotation)."""

    vm_id: str
    request_id: str
    username: str
    password: str = field(repr=False)
    command: str = SET_ADMIN_PASSWORD


@dataclass(frozen=True)
class ResizeVM:
    """New memory/vCPUs (through a clean restart) and a disk that only grows."""

    vm_id: str
    request_id: str
    memory_mb: int
    vcpus: int
    disk_gb: int
    command: str = RESIZE_VM


Command = CreateVM | ListVMs | VMCommand | SetAdminPassword | ResizeVM


ConsoleCommand = SetAdminPassword | ResizeVM


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


def generate_password() -> str:
    """32 URL-safe random characters: always within PASSWORD_RE."""
    return secrets.token_urlsafe(24)


def generate_admin() -> tuple[str, str]:
    """A fresh admin user name and a 32-character URL-safe password."""
    return f"warren-{secrets.token_hex(3)}", generate_password()


def _admin(options: dict[str, Any]) -> tuple[str, str, bool]:
    if "admin" not in options:
        return (*generate_admin(), True)
    return (*_credentials(options["admin"]), False)


def _credentials(admin: object) -> tuple[str, str]:
    """options.admin: a user name (not guest) and a password by PASSWORD_RE."""
    if not isinstance(admin, dict):
        raise Rejected("options.admin must be an object with username and password")
    username, password = admin.get("username"), admin.get("password")
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise Rejected("options.admin.username must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    if username == "guest":
        raise Rejected("options.admin.username must not be guest")
    if not isinstance(password, str) or not PASSWORD_RE.fullmatch(password):
        raise Rejected(f"options.admin.password must be {PASSWORD_RULE}")
    return username, password


def _limits(options: dict[str, Any]) -> dict[str, int]:
    limits = options.get("limits", {})
    if not isinstance(limits, dict):
        raise Rejected("options.limits must be an object")
    result: dict[str, int] = {}
    for key, value in limits.items():
        if key not in LIMIT_KEYS:
            raise Rejected(f"options.limits: unknown limit (allowed: {', '.join(LIMIT_KEYS)})")
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not LIMIT[0] <= value <= LIMIT[1]
        ):
            raise Rejected(
                f"options.limits.{key} must be an integer between {LIMIT[0]} and {LIMIT[1]}"
            )
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
        plain_ports=_plain_ports(options),
    )


def _plain_ports(options: dict[str, Any]) -> bool:
    value = options.get("plain-ports", True)
    if not isinstance(value, bool):
        raise Rejected("options.plain-ports must be true or false")
    return value


def _vm_id(options: dict[str, Any]) -> str:
    if "vm-id" not in options:
        raise Rejected("options.vm-id is required")
    return validate_vm_id(options["vm-id"])


def validate_request_id(value: object) -> str:
    """A request id: a UUID string, returned in its canonical form (lower case, dashes)."""
    if not isinstance(value, str) or len(value) > 36:
        raise Rejected("options.request-id must be a UUID")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Rejected("options.request-id must be a UUID") from None


def _request_id(options: dict[str, Any]) -> str:
    """The optional options.request-id ("" when absent)."""
    return validate_request_id(options["request-id"]) if "request-id" in options else ""


def _required_int(options: dict[str, Any], key: str, bounds: tuple[int, int, int]) -> int:
    if key not in options:
        raise Rejected(f"options.{key} is required")
    return _int(options, key, bounds)


def _vm_command(command: str, options: dict[str, Any]) -> VMCommand:
    vm_id = _vm_id(options)
    kill = options.get("kill", False)
    if not isinstance(kill, bool):
        raise Rejected("options.kill must be true or false")
    request_id = _request_id(options) if command == RESTART_VM else ""
    return VMCommand(command=command, vm_id=vm_id, kill=kill, request_id=request_id)


def _set_admin_password(options: dict[str, Any]) -> SetAdminPassword:
    vm_id = _vm_id(options)
    request_id = _request_id(options)
    if "admin" not in options:
        raise Rejected("options.admin is required")
    username, password = _credentials(options["admin"])
    return SetAdminPassword(
        vm_id=vm_id, request_id=request_id, username=username, password=password
    )


def _resize_vm(options: dict[str, Any]) -> ResizeVM:
    return ResizeVM(
        vm_id=_vm_id(options),
        request_id=_request_id(options),
        memory_mb=_required_int(options, "memory-mb", MEMORY_MB),
        vcpus=_required_int(options, "vcpus", VCPUS),
        disk_gb=_required_int(options, "disk-gb", DISK_GB),
    )


def parse(body: bytes) -> Command:
    """Validate one command body; raise Rejected with a reason."""
    data = load_body(body, Rejected)
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
    if command == SET_ADMIN_PASSWORD:
        return _set_admin_password(options)
    if command == RESIZE_VM:
        return _resize_vm(options)
    return _vm_command(command, options)


def peek(body: bytes) -> dict[str, Any] | None:
    """The JSON object in a body that need not be a valid message (a dead letter), or None.

    Same guards as `parse` (size, depth, number length), so it never raises."""
    try:
        return load_body(body, Rejected)
    except Rejected:
        return None


def command_body(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request body as a dict (the shop stores it in its outbox before publishing)."""
    return {"version": PROTOCOL_VERSION, "command": name, "options": options or {}}


def command(name: str, options: dict[str, Any] | None = None) -> bytes:
    """A request body (used by the client)."""
    return encode(command_body(name, options))


def create_vm_body(
    *,
    vm_id: str,
    image: str,
    memory_mb: int,
    vcpus: int,
    disk_gb: int,
    admin_username: str,
    admin_password: str,
    limits: dict[str, int],
    plain_ports: bool = True,
) -> dict[str, Any]:
    """The create-vm command the shop sends (no reply_to: events tell it what happened)."""
    options: dict[str, Any] = {
        "image": image,
        "vm-id": vm_id,
        "memory-mb": memory_mb,
        "vcpus": vcpus,
        "disk-gb": disk_gb,
        "admin": {"username": admin_username, "password": admin_password},
        "limits": limits,
    }
    if not plain_ports:  # absent means true: older hosts and bodies stay as they were
        options["plain-ports"] = False
    return command_body(CREATE_VM, options)


def delete_vm_body(*, vm_id: str) -> dict[str, Any]:
    return command_body("delete-vm", {"vm-id": vm_id})


# The console's commands (no reply_to: instance.command_done/failed tell the shop the outcome;
# send them with routing key host.<host_id> of the VM's host).
def set_admin_password_body(
    *, vm_id: str, request_id: str | uuid.UUID, username: str, password: str
) -> dict[str, Any]:
    return command_body(
        SET_ADMIN_PASSWORD,
        {
            "vm-id": vm_id,
            "request-id": str(request_id),
            "admin": {"username": username, "password": password},
        },
    )


def resize_vm_body(
    *, vm_id: str, request_id: str | uuid.UUID, memory_mb: int, vcpus: int, disk_gb: int
) -> dict[str, Any]:
    return command_body(
        RESIZE_VM,
        {
            "vm-id": vm_id,
            "request-id": str(request_id),
            "memory-mb": memory_mb,
            "vcpus": vcpus,
            "disk-gb": disk_gb,
        },
    )


def restart_vm_body(*, vm_id: str, request_id: str | uuid.UUID) -> dict[str, Any]:
    return command_body(RESTART_VM, {"vm-id": vm_id, "request-id": str(request_id)})
