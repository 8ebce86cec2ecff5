"""The instances' metrics in the shop: store samples, roll them up, prune, and read them for graphs.

A host publishes an `instance.metrics` event for each ready VM every 30 s (docs/protocol.md). The
event worker hands it to `apply_metrics`, which stores one `MetricSample` row and lets
orders/monitoring/alarms.py look at it. Metrics events are not seq-ordered: they never touch the
instance's `last_event_seq` (the seq/idempotency record of lifecycle events), so nothing about them
is kept beyond the time series itself. A redelivered event (same instance, same occurred_at) is
stored once (a unique constraint).

Bounded (docs/metrics.md): raw points for RAW_RETENTION (24 h), 5-minute roll-ups for
ROLLUP_RETENTION (30 days). `rollup_and_prune(now)` does both; the event worker runs it every
minute (`EventConsumer.maintain`) and `manage.py prune_metrics` runs it by hand or from cron.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from orders.models import AlarmEvent, Instance, MetricRollup, MetricSample
from orders.monitoring import alarms
from vmbackend.protocol.messages import (
    MAX_METRIC_INT,
    METRIC_BOOLS,
    METRIC_FLOATS,
    METRIC_INTS,
    Metrics,
)

log = logging.getLogger(__name__)

RAW_RETENTION = timedelta(hours=24)
ROLLUP_RETENTION = timedelta(days=30)
BUCKET = timedelta(minutes=5)
# A bucket is rolled up once it ended this long ago: samples published at its end but delivered
# a little late are still counted. (Later than that, a point is kept raw but not rolled up.)
ROLLUP_GRACE = timedelta(seconds=60)

# The contract's RabbitMQ fields (docs/protocol.md, instance.metrics), each a MetricSample column
# of the same name; the host's (HOST_METRICS) are stored apart, present even when unreachable.
MANAGEMENT_FIELDS = (*METRIC_INTS, *METRIC_FLOATS, *METRIC_BOOLS)


# -- storing ------------------------------------------------------------------------------------


def record_sample(*, instance: Instance, at: datetime, metrics: Metrics) -> MetricSample | None:
    """Store one sample; None when this instance already has one at `at` (a redelivery)."""
    if MetricSample.objects.filter(instance=instance, at=at).exists():
        return None
    sample = build_sample(instance, at, metrics)
    # Race: two workers with the same redelivered event. ON CONFLICT DO NOTHING (SQLite and
    # PostgreSQL) keeps one row, with no exception and no aborted transaction.
    MetricSample.objects.bulk_create([sample], ignore_conflicts=True)
    return sample


def build_sample(instance: Instance, at: datetime, metrics: Metrics) -> MetricSample:
    """The row for one sample (not saved)."""
    fields: dict[str, Any] = {name: getattr(metrics, name) for name in MANAGEMENT_FIELDS}
    if not metrics.reachable:  # nothing from the management API can be true of this moment
        fields = dict.fromkeys(MANAGEMENT_FIELDS)
    return MetricSample(
        instance=instance,
        at=at,
        reachable=bool(metrics.reachable),
        cpu_percent=metrics.cpu_percent or 0.0,
        rss_bytes=metrics.rss_bytes or 0,
        **fields,
    )


def apply_metrics(*, instance_id: uuid.UUID, host_id: str, at: datetime, metrics: Metrics) -> str:
    """Store a sample of the instance `instance_id` reported by `host_id`, then evaluate its
    alarms (orders/monitoring/alarms.py), in one transaction. Returns what happened (for logs and
    tests).

    A sample from a host that is not the instance's (a duplicate copy, docs/orders.md) or of an
    instance without a VM is dropped: the graphs show the copy the customer uses."""
    with transaction.atomic():
        instance = (
            Instance.objects.select_related("order")
            .filter(public_id=instance_id)
            .only("pk", "public_id", "host_id", "status", "order__public_id", "order__user_id")
            .first()
        )
        if instance is None:
            return "unknown_instance"
        if instance.host_id != host_id:
            return "other_host"
        if instance.status in Instance.WITHOUT_VM or instance.status == Instance.Status.DELETING:
            return "ignored"
        newest = _newest_at(instance)
        if newest is not None and at <= newest:
            # A redelivery, or late: kept for the graphs; alarms only move forward in time.
            late = record_sample(instance=instance, at=at, metrics=metrics)
            return "duplicate" if late is None else "stored_late"
        # The newest: no duplicate check needed (a racing copy of the same event is dropped by
        # ON CONFLICT; its alarm evaluation changes nothing twice, the status is compare-and-set).
        sample = build_sample(instance, at, metrics)
        MetricSample.objects.bulk_create([sample], ignore_conflicts=True)
        alarms.evaluate(instance=instance, sample=sample)
    return "recorded"


def _newest_at(instance: Instance) -> datetime | None:
    return (
        MetricSample.objects.filter(instance=instance)
        .order_by("-at")
        .values_list("at", flat=True)
        .first()
    )


# -- roll-up and pruning ------------------------------------------------------------------------


def bucket_start(moment: datetime) -> datetime:
    """The start of the 5-minute bucket holding `moment` (UTC)."""
    moment = moment.astimezone(UTC)
    return moment.replace(minute=moment.minute - moment.minute % 5, second=0, microsecond=0)


def _mean(values: Sequence[float | int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


ROLLUP_AVERAGED = (
    "publish_rate",
    "deliver_rate",
    "ack_rate",
    "connections",
    "mem_used",
    "mem_limit",
    "disk_free",
    "disk_free_limit",
    "cpu_percent",
)
# What a roll-up reads of each raw point: the averaged values and what the queue total needs.
ROLLUP_RAW = (
    "instance_id",
    "at",
    "reachable",
    "messages_ready",
    "messages_unacked",
    *ROLLUP_AVERAGED,
)


def rollup_rows(rows: Iterable[dict[str, Any]]) -> list[MetricRollup]:
    """Pure: raw points (dicts of ROLLUP_RAW) -> one MetricRollup per (instance, bucket).

    Averages over the reachable points of the bucket (an unreachable point has no values);
    CPU over all points (the host measures it either way)."""
    groups: dict[tuple[int, datetime], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["instance_id"], bucket_start(row["at"]))].append(row)
    rollups = []
    for (instance_pk, bucket), points in sorted(groups.items()):
        up = [p for p in points if p["reachable"]]
        queued = [
            p["messages_ready"] + p["messages_unacked"]
            for p in up
            if p["messages_ready"] is not None and p["messages_unacked"] is not None
        ]
        values = {name: _mean([p[name] for p in up]) for name in ROLLUP_AVERAGED}
        values["cpu_percent"] = _mean([p["cpu_percent"] for p in points])
        rollups.append(
            MetricRollup(
                instance_id=instance_pk,
                bucket=bucket,
                samples=len(points),
                reachable_samples=len(up),
                messages_queued=_mean(queued),
                # ready + unacked can exceed a 64-bit column at the contract's bounds.
                max_messages_queued=min(max(queued), MAX_METRIC_INT) if queued else None,
                **values,
            )
        )
    return rollups


def rollup(now: datetime) -> int:
    """Roll up every complete bucket not rolled up yet (all instances); returns rows written.

    Watermark: the newest bucket already rolled up (rows are written per bucket range, all
    instances at once, so one bucket is either done for everyone or not at all). Idempotent:
    the range is replaced in one transaction."""
    end = bucket_start(now - ROLLUP_GRACE)
    newest = MetricRollup.objects.order_by("-bucket").values_list("bucket", flat=True).first()
    start = newest + BUCKET if newest else bucket_start(now - RAW_RETENTION)
    start = max(start, bucket_start(now - RAW_RETENTION))
    if start >= end:
        return 0
    rows = MetricSample.objects.filter(at__gte=start, at__lt=end).values(*ROLLUP_RAW)
    rollups = rollup_rows(rows.iterator(chunk_size=2000))
    with transaction.atomic():
        MetricRollup.objects.filter(bucket__gte=start, bucket__lt=end).delete()
        MetricRollup.objects.bulk_create(rollups, batch_size=500)
    return len(rollups)


def prune(now: datetime) -> dict[str, int]:
    """Drop raw points older than RAW_RETENTION, roll-ups and alarm history older than
    ROLLUP_RETENTION. One DELETE each (no cascades, no signals: Django's fast path)."""
    raw, _ = MetricSample.objects.filter(at__lt=now - RAW_RETENTION).delete()
    rolled, _ = MetricRollup.objects.filter(bucket__lt=now - ROLLUP_RETENTION).delete()
    history, _ = AlarmEvent.objects.filter(at__lt=now - ROLLUP_RETENTION).delete()
    return {"raw_deleted": raw, "rollups_deleted": rolled, "alarm_events_deleted": history}


def rollup_and_prune(now: datetime | None = None) -> dict[str, int]:
    """The periodic job: roll up first (a point is rolled up before it can be pruned), then prune."""
    now = now or timezone.now()
    counts = {"rollups_written": rollup(now), **prune(now)}
    log.info("event=metrics_pruned %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


# -- reading for the order page -----------------------------------------------------------------

RANGES: dict[str, timedelta] = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}
RANGES["7d"] = timedelta(days=7)
DEFAULT_RANGE = "1h"
# The resolution each range is drawn at: 1 h every point (30 s); 24 h 5-minute averages of the
# raw points; 7 d 30-minute averages of the roll-ups. At most ~340 points per line.
STEP: dict[str, timedelta | None] = {
    "1h": None,
    "24h": timedelta(minutes=5),
    "7d": timedelta(minutes=30),
}
GRAPH_FIELDS = (
    "messages_queued",
    "messages_ready",
    "publish_rate",
    "deliver_rate",
    "ack_rate",
    "connections",
    "mem_used",
    "mem_limit",
    "disk_free",
    "disk_free_limit",
)


@dataclass(frozen=True)
class Point:
    """One point of the graphs: None for a value not known then (server not answering)."""

    at: datetime
    values: dict[str, float | None] = field(default_factory=dict)


def _raw_points(instance: Instance, since: datetime) -> list[Point]:
    points = []
    for sample in MetricSample.objects.filter(instance=instance, at__gte=since).order_by("at"):
        values: dict[str, float | None] = {
            name: getattr(sample, name) for name in GRAPH_FIELDS if name != "messages_queued"
        }
        values["messages_queued"] = sample.messages_queued
        points.append(Point(sample.at, values))
    return points


def _rollup_points(instance: Instance, since: datetime) -> list[Point]:
    rows = MetricRollup.objects.filter(instance=instance, bucket__gte=since).order_by("bucket")
    points = []
    for row in rows:
        values: dict[str, float | None] = {
            name: getattr(row, name) for name in GRAPH_FIELDS if name != "messages_ready"
        }
        values["messages_ready"] = None  # not rolled up: the total is what the 7-day graph shows
        points.append(Point(row.bucket, values))
    return points


def downsample(points: Sequence[Point], step: timedelta) -> list[Point]:
    """Pure: average points into `step`-wide buckets (each value over its known points; None
    when no point of the bucket knew it). Points must be in time order."""
    seconds = step.total_seconds()
    groups: dict[float, list[Point]] = {}
    for point in points:
        key = point.at.timestamp() // seconds * seconds
        groups.setdefault(key, []).append(point)
    out = []
    for key, group in groups.items():
        names = {name for point in group for name in point.values}
        out.append(
            Point(
                datetime.fromtimestamp(key, UTC),
                {name: _mean([p.values.get(name) for p in group]) for name in sorted(names)},
            )
        )
    return out


def graph_points(instance: Instance, range_key: str, now: datetime) -> list[Point]:
    """The points of the order page's graphs for one range ("1h", "24h", "7d")."""
    since = now - RANGES[range_key]
    step = STEP[range_key]
    if range_key == "7d":
        points = _rollup_points(instance, since)
        # Not rolled up yet (the last few minutes): the raw points, at the same resolution.
        done = points[-1].at + BUCKET if points else since
        # The 7-day graph has no "ready" line (the roll-ups keep the total only).
        points += [
            Point(p.at, p.values | {"messages_ready": None}) for p in _raw_points(instance, done)
        ]
    else:
        points = _raw_points(instance, since)
    return downsample(points, step) if step else points


def latest_sample(instance: Instance) -> MetricSample | None:
    return MetricSample.objects.filter(instance=instance).order_by("-at").first()


def unreachable_since(instance: Instance, latest: MetricSample | None) -> datetime | None:
    """When the server stopped answering, if its latest sample says it does not answer: the
    first unreachable sample after the last reachable one (or the oldest kept)."""
    if latest is None or latest.reachable:
        return None
    samples = MetricSample.objects.filter(instance=instance)
    last_up = samples.filter(reachable=True).order_by("-at").values_list("at", flat=True).first()
    down = samples.filter(reachable=False)
    if last_up is not None:
        down = down.filter(at__gt=last_up)
    return down.order_by("at").values_list("at", flat=True).first()
