"""The events hosts publish (instance.*, host.heartbeat): `event` builds one on the host,
`parse_event` reads one in the shop (`MalformedEvent`), both against the same bounds.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from vmbackend.protocol.requests import DISK_GB, IMAGE_RE, MEMORY_MB, USERNAME_RE, VCPUS
from vmbackend.protocol.samples import INSTANCE_METRICS, MAX_METRICS_BYTES, Metrics, parse_metrics
from vmbackend.protocol.urls import AMQP_SCHEMES, MANAGEMENT_SCHEMES, MAX_URL, BadURL, check_url
from vmbackend.protocol.wire import (
    PROTOCOL_VERSION,
    MalformedEvent,
    dumps,
    event_int,
    event_str,
    load_body,
    now_iso,
)


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
    return dumps(body)


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


MAX_REASON = 4000


MAX_SHORT = 100  # message_id, occurred_at, image, admin_username, each IP address


MAX_ADDRESSES = 64


MAX_VERSION = 50  # daemon_version


HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


COMMAND_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,49}$")


RUNTIME_KEYS = ("rabbitmq_version", "erlang_version", "node")  # instance.ready's runtime


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
        image = event_str(entry, "image", MAX_SHORT, required=True, pattern=IMAGE_RE, what="image")
        memory, target, ready, starting = (
            event_int(entry, name, MAX_COUNT, required=True)
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
    return {name: event_str(runtime, name, MAX_SHORT) for name in RUNTIME_KEYS}


def _outcome(data: dict[str, Any], event_type: str) -> dict[str, Any]:
    """The fields of instance.command_done / instance.command_failed."""
    fields: dict[str, Any] = {
        "command": event_str(
            data,
            "command",
            MAX_TYPE,
            required=True,
            pattern=COMMAND_NAME_RE,
            what="a command name ([a-z][a-z0-9-]*)",
        )
    }
    request_id = event_str(data, "request_id", MAX_SHORT)
    if request_id:
        try:
            fields["request_id"] = uuid.UUID(request_id)
        except ValueError:
            raise MalformedEvent("request_id must be a UUID") from None
    if event_type == INSTANCE_COMMAND_FAILED:
        fields["reason"] = event_str(data, "reason", MAX_REASON)
    else:
        fields["memory_mb"] = event_int(data, "memory_mb", MEMORY_MB[1])
        fields["vcpus"] = event_int(data, "vcpus", VCPUS[1])
        fields["disk_gb"] = event_int(data, "disk_gb", DISK_GB[1])
    return fields


def _url(data: dict[str, Any], name: str, schemes: tuple[str, ...], *, user: bool) -> str:
    """A URL field of instance.ready, checked in full (vmbackend/protocol/urls.py)."""
    value = event_str(data, name, MAX_URL, required=True)
    try:
        return check_url(value, schemes, user=user)
    except BadURL as exc:
        raise MalformedEvent(f"{name} {exc}") from None


def parse_event(body: bytes) -> Event:
    """Validate one event body (docs/protocol.md, Events); raise MalformedEvent with a reason.

    An unknown `type` is accepted with its envelope only (a newer daemon's event is no error)."""
    data = load_body(body, MalformedEvent)
    version = data.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise MalformedEvent(f"unsupported version (this shop speaks {PROTOCOL_VERSION})")
    event_type = event_str(data, "type", MAX_TYPE, required=True)
    fields: dict[str, Any] = {
        "type": event_type,
        "host_id": event_str(
            data,
            "host_id",
            MAX_HOST_ID,
            required=True,
            pattern=HOST_ID_RE,
            what="a host id ([A-Za-z0-9][A-Za-z0-9._-]*)",
        ),
        "message_id": event_str(data, "message_id", MAX_SHORT),
        "occurred_at": event_str(data, "occurred_at", MAX_SHORT),
        "seq": event_int(data, "seq", MAX_SEQ, required=event_type in INSTANCE_EVENTS),
    }
    if event_type == INSTANCE_METRICS and len(body) >= MAX_METRICS_BYTES:
        raise MalformedEvent(
            f"instance.metrics body must be smaller than {MAX_METRICS_BYTES} bytes"
        )
    if event_type in INSTANCE_EVENTS or event_type in (INSTANCE_METRICS, INSTANCE_DECLINED):
        instance_id = event_str(data, "instance_id", MAX_SHORT, required=True)
        try:
            fields["instance_id"] = uuid.UUID(instance_id)
        except ValueError:
            raise MalformedEvent("instance_id must be a UUID") from None
    if event_type == INSTANCE_ACCEPTED:
        fields["image"] = event_str(data, "image", MAX_SHORT)
    elif event_type == INSTANCE_PROGRESS:
        if data.get("stage") not in STAGES:
            raise MalformedEvent(f"stage must be one of {', '.join(STAGES)}")
        fields["stage"] = data["stage"]
    elif event_type == INSTANCE_READY:
        fields["management_url"] = _url(data, "management_url", MANAGEMENT_SCHEMES, user=False)
        fields["amqp_url"] = _url(data, "amqp_url", AMQP_SCHEMES, user=True)
        fields["admin_username"] = event_str(
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
        fields["reason"] = event_str(data, "reason", MAX_REASON)
    elif event_type == INSTANCE_RESTARTING:
        fields["reason"] = event_str(data, "reason", MAX_REASON)
        fields["attempt"] = event_int(data, "attempt", MAX_COUNT)
    elif event_type == HEARTBEAT:
        for name in ("capacity", "running", "free_slots"):
            fields[name] = event_int(data, name, MAX_COUNT)
        fields["daemon_version"] = event_str(data, "daemon_version", MAX_VERSION)
        fields["resources"] = {
            name: event_int(data, name, MAX_RESOURCE) for name in HEARTBEAT_RESOURCES
        }
        fields["pool"] = pool_summary(data.get("pool"))
    elif event_type == INSTANCE_DECLINED:
        fields["reason"] = event_str(data, "reason", MAX_REASON)
    elif event_type == INSTANCE_METRICS:
        fields["metrics"] = parse_metrics(data)
    return Event(**fields)
