"""instance.metrics: one best-effort sample of a VM (not seq-ordered), its fields and bounds."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vmbackend.protocol.wire import PROTOCOL_VERSION, MalformedEvent, dumps, now_iso

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


def parse_metrics(data: dict[str, Any]) -> Metrics:
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
    if len(dumps(body)) >= MAX_METRICS_BYTES:
        raise ValueError(f"instance.metrics body must be smaller than {MAX_METRICS_BYTES} bytes")
    return body
