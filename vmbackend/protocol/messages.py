"""The control protocol's messages (docs/protocol.md), built and parsed here for both sides.

This module is the contract: the shop builds its commands with `create_vm_body`/`delete_vm_body`
(and the console's `set_admin_password_body`/`resize_vm_body`/`restart_vm_body`) and reads events with `parse_event`; the daemon reads commands with `parse` and builds events with
`event`. Neither side writes a body by hand, so the two cannot drift apart.

`parse` turns a raw AMQP body into one typed command or raises `Rejected` with a reason that is
safe to send back to the sender and to put in a dead-letter header (it never echoes a password);
`parse_event` does the same for events (`MalformedEvent`). Both bound the body's size and nesting
depth BEFORE decoding, so no body can make them raise anything else (a deep `[[[...` would be a
RecursionError inside json, a 5000-digit number a ValueError). Plain code: no `assert`, no schema
library, no Django.

It is longer than the project's other modules on purpose: it is the one written form of the
contract (one module builds and parses every message for both sides), and splitting it
would put the two sides' halves of the same message in different files.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

PROTOCOL_VERSION = 1
MAX_BODY_BYTES = 64 * 1024
MAX_DEPTH = 32  # deepest nesting of objects/arrays in any body (create-vm needs 3)
MAX_INT_DIGITS = 20  # 2**63-1 has 19 digits; longer numbers are refused before int() sees them
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


def generate_admin() -> tuple[str, str]:
    """A fresh admin user name and a 32-character URL-safe password."""
    return f"warren-{secrets.token_hex(3)}", secrets.token_urlsafe(24)


def _admin(options: dict[str, Any]) -> tuple[str, str, bool]:
    if "admin" not in options:
        return (*generate_admin(), True)
    return (*_credentials(options["admin"]), False)


def _credentials(admin: object) -> tuple[str, str]:
    """options.admin: a user name (not guest) and a 12-128 character printable password."""
    if not isinstance(admin, dict):
        raise Rejected("options.admin must be an object with username and password")
    username, password = admin.get("username"), admin.get("password")
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise Rejected("options.admin.username must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    if username == "guest":
        raise Rejected("options.admin.username must not be guest")
    if not isinstance(password, str) or not PASSWORD_RE.fullmatch(password):
        raise Rejected("options.admin.password must be 12-128 printable ASCII characters")
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


_ESCAPE = re.compile(r"\\.", re.DOTALL)  # \" or \\ inside a string
_STRING = re.compile(r'"[^"]*"')  # once escapes are gone; linear, no backtracking
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def too_deep(text: str) -> bool:
    """True when objects/arrays nest deeper than MAX_DEPTH (brackets inside strings don't count).

    json itself recurses once per level, so this runs first: drop escapes, then strings, then
    everything but brackets, and sum the steps with C-level iterators (no Python loop per char)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > MAX_DEPTH


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError("number too long")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def has_bad_string(value: Any) -> bool:
    """A NUL byte or a lone surrogate anywhere (keys too): neither may reach a file or a database."""
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_bad_string(k) or has_bad_string(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_bad_string(item) for item in value)
    return False


def _load(body: bytes, error: type[Rejected]) -> dict[str, Any]:
    """Decode one body to a JSON object, or raise `error` with a reason. Never anything else."""
    if not isinstance(body, bytes | bytearray):
        raise error("body must be bytes")
    if len(body) > MAX_BODY_BYTES:
        raise error(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise error("body is not UTF-8 JSON") from None
    if too_deep(text):
        raise error(f"body nests deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise error("body is not UTF-8 JSON (or has a number longer than 20 digits)") from None
    if not isinstance(data, dict):
        raise error("body must be a JSON object")
    if has_bad_string(data):
        raise error("body has a NUL byte or an unpaired surrogate in a string")
    return data


def parse(body: bytes) -> Command:
    """Validate one command body; raise Rejected with a reason."""
    data = _load(body, Rejected)
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
        return _load(body, Rejected)
    except Rejected:
        return None


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")


def success(response: Any) -> bytes:
    """A reply body for a served request."""
    return _dumps({"execution-info": {"status": "success"}, "response": response})


def error(reason: str) -> bytes:
    """A reply body for a refused or failed request."""
    return _dumps({"execution-info": {"status": "error", "reason": reason}})


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


def encode(body: dict[str, Any]) -> bytes:
    """The bytes on the wire for a command or event dict."""
    return _dumps(body)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def event(
    type_: str, *, instance_id: str | None, host_id: str, seq: int, **fields: Any
) -> dict[str, Any]:
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
    if isinstance(body.get("reason"), str):
        # A failure reason carries a console tail; the shop refuses events with a longer one.
        body["reason"] = body["reason"][:MAX_REASON]
    return body


def encode_event(body: dict[str, Any]) -> bytes:
    return _dumps(body)


# -- events, as the shop reads them ---------------------------------------------------------------

INSTANCE_ACCEPTED = "instance.accepted"
INSTANCE_PROGRESS = "instance.progress"
INSTANCE_READY = "instance.ready"
INSTANCE_FAILED = "instance.failed"
INSTANCE_STOPPED = "instance.stopped"
INSTANCE_STARTED = "instance.started"
INSTANCE_DELETED = "instance.deleted"
INSTANCE_LOST = "instance.lost"
INSTANCE_RESTARTING = "instance.restarting"  # QEMU exited on its own; the host starts it again
INSTANCE_COMMAND_DONE = "instance.command_done"  # a console command's outcome (request_id)
INSTANCE_COMMAND_FAILED = "instance.command_failed"
HEARTBEAT = "host.heartbeat"
# A host would not take a create-vm placed on it (routing key host.<id>): it does not fit there
# (any more). Not a state of the VM (the host keeps no record, seq 0): the shop places it again.
INSTANCE_DECLINED = "instance.declined"
# host.heartbeat's resource fields (docs/fleet.md); 0 from a daemon older than them.
HEARTBEAT_RESOURCES = (
    "memory_total_mb",
    "memory_used_mb",
    "memory_free_mb",
    "vcpus_total",
    "vcpus_used",
    "vcpus_free",
    "disk_total_gb",
    "disk_used_gb",
    "disk_free_gb",
)
MAX_RESOURCE = 2**40  # MiB / vCPUs / GB a host may report
INSTANCE_EVENTS = frozenset(
    {
        INSTANCE_ACCEPTED,
        INSTANCE_PROGRESS,
        INSTANCE_READY,
        INSTANCE_FAILED,
        INSTANCE_STOPPED,
        INSTANCE_STARTED,
        INSTANCE_DELETED,
        INSTANCE_LOST,
        INSTANCE_RESTARTING,
        INSTANCE_COMMAND_DONE,
        INSTANCE_COMMAND_FAILED,
    }
)
STAGES = ("vm_starting", "guest_up", "rabbitmq_starting")
BOOT_KINDS = ("cold", "restore", "pool")  # pool: a warm pool VM claimed (vmbackend/host/pool.py)

MAX_SEQ = 2**63 - 1  # the shop stores it in a signed 64-bit column
MAX_COUNT = 1_000_000  # capacity, running, free_slots, a restart's attempt
MAX_TYPE = 100
MAX_HOST_ID = 100
MAX_URL = 500
MAX_REASON = 4000
MAX_SHORT = 100  # message_id, occurred_at, image, admin_username, each IP address
MAX_ADDRESSES = 64
MAX_VERSION = 50  # daemon_version
HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
COMMAND_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,49}$")
RUNTIME_KEYS = ("rabbitmq_version", "erlang_version", "node")  # instance.ready's runtime
MANAGEMENT_URL_RE = re.compile(r"^https?://[^\s]+$")
AMQP_URL_RE = re.compile(r"^amqps?://[^\s]+$")


class MalformedEvent(Rejected):
    """The body is not a valid event of protocol version 1; the shop dead-letters it."""


# -- instance.metrics: one sample of a VM, best-effort, not seq-ordered ---------------------------

INSTANCE_METRICS = "instance.metrics"
MAX_METRICS_BYTES = 2048  # a sample is small; the shop refuses a larger one
MAX_METRIC_INT = 2**63 - 1  # the shop stores counters in signed 64-bit columns
MAX_METRIC_FLOAT = 1e12
METRIC_INTS = (
    "messages_ready",
    "messages_unacked",
    "connections",
    "channels",
    "consumers",
    "queues",
    "mem_used",
    "mem_limit",
    "disk_free",
    "disk_free_limit",
    "uptime_s",
)
METRIC_FLOATS = ("publish_rate", "deliver_rate", "ack_rate")
METRIC_BOOLS = ("mem_alarm", "disk_alarm")
HOST_METRICS = ("cpu_percent", "rss_bytes")


@dataclass(frozen=True)
class Metrics:
    """One sample of a VM (docs/protocol.md, instance.metrics). The RabbitMQ fields are None when
    the management API did not answer (`reachable` false); the host's fields come from QEMU."""

    reachable: bool
    messages_ready: int | None = None
    messages_unacked: int | None = None
    publish_rate: float | None = None  # messages per second
    deliver_rate: float | None = None
    ack_rate: float | None = None
    connections: int | None = None
    channels: int | None = None
    consumers: int | None = None
    queues: int | None = None
    mem_used: int | None = None  # bytes
    mem_limit: int | None = None  # the memory high watermark
    disk_free: int | None = None
    disk_free_limit: int | None = None
    mem_alarm: bool | None = None
    disk_alarm: bool | None = None
    uptime_s: int | None = None
    cpu_percent: float | None = None  # QEMU's CPU time per wall time (100 = one core)
    rss_bytes: int | None = None  # QEMU's resident memory


def _metric(name: str, value: object) -> int | float | bool | None:
    """`value` checked against its field's bounds, or MalformedEvent. None stays None."""
    if value is None:
        return None
    if name in METRIC_BOOLS:
        if not isinstance(value, bool):
            raise MalformedEvent(f"{name} must be true, false or null")
        return value
    if name in METRIC_FLOATS or name == "cpu_percent":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= MAX_METRIC_FLOAT  # NaN fails both comparisons
        ):
            raise MalformedEvent(f"{name} must be a number between 0 and {MAX_METRIC_FLOAT:g}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_METRIC_INT:
        raise MalformedEvent(f"{name} must be an integer between 0 and 2^63-1 or null")
    return value


def _metrics(data: dict[str, Any]) -> Metrics:
    reachable = data.get("reachable")
    if not isinstance(reachable, bool):
        raise MalformedEvent("reachable must be true or false")
    occurred_at = data.get("occurred_at")
    try:
        aware = datetime.fromisoformat(str(occurred_at)).tzinfo is not None
    except ValueError:
        aware = False
    if not aware:
        raise MalformedEvent("occurred_at must be an ISO 8601 time with a UTC offset")
    values: dict[str, Any] = {
        name: _metric(name, data.get(name))
        for name in (*METRIC_INTS, *METRIC_FLOATS, *METRIC_BOOLS, *HOST_METRICS)
    }
    if not reachable:  # an unreachable sample never carries (stale) RabbitMQ numbers
        values = {name: v for name, v in values.items() if name in HOST_METRICS}
    return Metrics(reachable=reachable, **values)


def metrics_event(*, instance_id: str, host_id: str, metrics: Metrics) -> dict[str, Any]:
    """An instance.metrics body: the envelope without `seq` (samples are not ordered or kept;
    a lost one is simply a gap), the sample's fields, None ones left out. Raises ValueError
    when a value is outside the bounds the shop checks (a bug on the host, not input)."""
    body: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "message_id": str(uuid.uuid4()),
        "type": INSTANCE_METRICS,
        "instance_id": instance_id,
        "host_id": host_id,
        "occurred_at": now_iso(),
        "reachable": metrics.reachable,
    }
    for name in (*METRIC_INTS, *METRIC_FLOATS, *METRIC_BOOLS, *HOST_METRICS):
        value = getattr(metrics, name)
        if value is None or (not metrics.reachable and name not in HOST_METRICS):
            continue
        try:
            body[name] = _metric(name, value)
        except MalformedEvent as exc:
            raise ValueError(exc.reason) from None
    if len(_dumps(body)) >= MAX_METRICS_BYTES:
        raise ValueError(f"instance.metrics body must be smaller than {MAX_METRICS_BYTES} bytes")
    return body


@dataclass(frozen=True)
class Event:
    """One event as the shop reads it. Type-specific fields are empty/zero when absent."""

    type: str
    host_id: str
    seq: int
    instance_id: uuid.UUID | None = None
    message_id: str = ""
    occurred_at: str = ""
    stage: str = ""
    management_url: str = ""
    amqp_url: str = ""
    admin_username: str = ""
    reason: str = ""
    attempt: int = 0
    image: str = ""
    capacity: int = 0
    running: int = 0
    free_slots: int = 0
    daemon_version: str = ""
    # host.heartbeat's resources (HEARTBEAT_RESOURCES; 0 when absent)
    resources: dict[str, int] = field(default_factory=dict)
    pool: str = ""  # host.heartbeat: the warm pool in words (`pool_summary`), "" without one
    metrics: Metrics | None = None  # instance.metrics only
    # instance.ready's optional runtime (what the VM runs; "" when not reported)
    rabbitmq_version: str = ""
    erlang_version: str = ""
    node: str = ""
    # instance.command_done / instance.command_failed (sizes: resize-vm's done only; 0 otherwise)
    command: str = ""
    request_id: uuid.UUID | None = None
    memory_mb: int = 0
    vcpus: int = 0
    disk_gb: int = 0

    @property
    def is_instance_event(self) -> bool:
        return self.type in INSTANCE_EVENTS


def _event_str(
    data: dict[str, Any],
    name: str,
    limit: int,
    *,
    required: bool = False,
    pattern: re.Pattern[str] | None = None,
    what: str = "",
) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        kind = "a non-empty string" if required else "a string"
        raise MalformedEvent(f"{name} must be {kind} of at most {limit} characters")
    if value and pattern is not None and not pattern.fullmatch(value):
        raise MalformedEvent(f"{name} must be {what}")
    return value


def _event_int(data: dict[str, Any], name: str, high: int, *, required: bool = False) -> int:
    if name not in data and not required:
        return 0
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise MalformedEvent(f"{name} must be an integer between 0 and {high}")
    return value


MAX_POOL_ENTRIES = 16


def pool_summary(value: Any) -> str:
    """A heartbeat's optional `pool` (a list of {image, memory_mb, target, ready, starting},
    vmbackend/host/pool.py) checked and put in words for staff: "tiny 256 MiB: 1/1 ready, 0 starting"."""
    if value is None:
        return ""
    if not isinstance(value, list) or len(value) > MAX_POOL_ENTRIES:
        raise MalformedEvent(f"pool must be a list of at most {MAX_POOL_ENTRIES} entries")
    parts = []
    for entry in value:
        if not isinstance(entry, dict):
            raise MalformedEvent("pool entries must be objects")
        image = _event_str(entry, "image", MAX_SHORT, required=True, pattern=IMAGE_RE, what="image")
        memory, target, ready, starting = (
            _event_int(entry, name, MAX_COUNT, required=True)
            for name in ("memory_mb", "target", "ready", "starting")
        )
        parts.append(f"{image} {memory} MiB: {ready}/{target} ready, {starting} starting")
    return "; ".join(parts)


def _ready_extras(data: dict[str, Any]) -> None:
    """Fields of instance.ready the shop does not store, checked so nothing odd passes."""
    addresses = data.get("ip_addresses", [])
    if (
        not isinstance(addresses, list)
        or len(addresses) > MAX_ADDRESSES
        or not all(isinstance(a, str) and len(a) <= MAX_SHORT for a in addresses)
    ):
        raise MalformedEvent(f"ip_addresses must be a list of at most {MAX_ADDRESSES} strings")
    if data.get("boot", "cold") not in BOOT_KINDS:
        raise MalformedEvent(f"boot must be one of {', '.join(BOOT_KINDS)}")
    seconds = data.get("seconds")
    if seconds is not None and (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= 10**9
    ):
        raise MalformedEvent("seconds must be a non-negative number")


def _runtime(data: dict[str, Any]) -> dict[str, str]:
    """instance.ready's optional `runtime` object: known keys as strings (unknown keys ignored)."""
    runtime = data.get("runtime")
    if runtime is None:
        return {}
    if not isinstance(runtime, dict):
        raise MalformedEvent("runtime must be an object")
    return {name: _event_str(runtime, name, MAX_SHORT) for name in RUNTIME_KEYS}


def _outcome(data: dict[str, Any], event_type: str) -> dict[str, Any]:
    """The fields of instance.command_done / instance.command_failed."""
    fields: dict[str, Any] = {
        "command": _event_str(
            data,
            "command",
            MAX_TYPE,
            required=True,
            pattern=COMMAND_NAME_RE,
            what="a command name ([a-z][a-z0-9-]*)",
        )
    }
    request_id = _event_str(data, "request_id", MAX_SHORT)
    if request_id:
        try:
            fields["request_id"] = uuid.UUID(request_id)
        except ValueError:
            raise MalformedEvent("request_id must be a UUID") from None
    if event_type == INSTANCE_COMMAND_FAILED:
        fields["reason"] = _event_str(data, "reason", MAX_REASON)
    else:
        fields["memory_mb"] = _event_int(data, "memory_mb", MEMORY_MB[1])
        fields["vcpus"] = _event_int(data, "vcpus", VCPUS[1])
        fields["disk_gb"] = _event_int(data, "disk_gb", DISK_GB[1])
    return fields


def parse_event(body: bytes) -> Event:
    """Validate one event body (docs/protocol.md, Events); raise MalformedEvent with a reason.

    An unknown `type` is accepted with its envelope only (a newer daemon's event is no error)."""
    data = _load(body, MalformedEvent)
    version = data.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise MalformedEvent(f"unsupported version (this shop speaks {PROTOCOL_VERSION})")
    event_type = _event_str(data, "type", MAX_TYPE, required=True)
    fields: dict[str, Any] = {
        "type": event_type,
        "host_id": _event_str(
            data,
            "host_id",
            MAX_HOST_ID,
            required=True,
            pattern=HOST_ID_RE,
            what="a host id ([A-Za-z0-9][A-Za-z0-9._-]*)",
        ),
        "message_id": _event_str(data, "message_id", MAX_SHORT),
        "occurred_at": _event_str(data, "occurred_at", MAX_SHORT),
        "seq": _event_int(data, "seq", MAX_SEQ, required=event_type in INSTANCE_EVENTS),
    }
    if event_type == INSTANCE_METRICS and len(body) >= MAX_METRICS_BYTES:
        raise MalformedEvent(
            f"instance.metrics body must be smaller than {MAX_METRICS_BYTES} bytes"
        )
    if event_type in INSTANCE_EVENTS or event_type in (INSTANCE_METRICS, INSTANCE_DECLINED):
        instance_id = _event_str(data, "instance_id", MAX_SHORT, required=True)
        try:
            fields["instance_id"] = uuid.UUID(instance_id)
        except ValueError:
            raise MalformedEvent("instance_id must be a UUID") from None
    if event_type == INSTANCE_ACCEPTED:
        fields["image"] = _event_str(data, "image", MAX_SHORT)
    elif event_type == INSTANCE_PROGRESS:
        if data.get("stage") not in STAGES:
            raise MalformedEvent(f"stage must be one of {', '.join(STAGES)}")
        fields["stage"] = data["stage"]
    elif event_type == INSTANCE_READY:
        fields["management_url"] = _event_str(
            data,
            "management_url",
            MAX_URL,
            required=True,
            pattern=MANAGEMENT_URL_RE,
            what="an http:// or https:// URL",
        )
        fields["amqp_url"] = _event_str(
            data,
            "amqp_url",
            MAX_URL,
            required=True,
            pattern=AMQP_URL_RE,
            what="an amqp:// or amqps:// URL",
        )
        fields["admin_username"] = _event_str(
            data,
            "admin_username",
            MAX_SHORT,
            pattern=USERNAME_RE,
            what="a user name ([A-Za-z0-9][A-Za-z0-9._-]*)",
        )
        _ready_extras(data)
        fields.update(_runtime(data))
    elif event_type in (INSTANCE_COMMAND_DONE, INSTANCE_COMMAND_FAILED):
        fields.update(_outcome(data, event_type))
    elif event_type in (INSTANCE_FAILED, INSTANCE_LOST):
        fields["reason"] = _event_str(data, "reason", MAX_REASON)
    elif event_type == INSTANCE_RESTARTING:
        fields["reason"] = _event_str(data, "reason", MAX_REASON)
        fields["attempt"] = _event_int(data, "attempt", MAX_COUNT)
    elif event_type == HEARTBEAT:
        for name in ("capacity", "running", "free_slots"):
            fields[name] = _event_int(data, name, MAX_COUNT)
        fields["daemon_version"] = _event_str(data, "daemon_version", MAX_VERSION)
        fields["resources"] = {
            name: _event_int(data, name, MAX_RESOURCE) for name in HEARTBEAT_RESOURCES
        }
        fields["pool"] = pool_summary(data.get("pool"))
    elif event_type == INSTANCE_DECLINED:
        fields["reason"] = _event_str(data, "reason", MAX_REASON)
    elif event_type == INSTANCE_METRICS:
        fields["metrics"] = _metrics(data)
    return Event(**fields)
